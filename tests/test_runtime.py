"""Run-time set-up every command shares: the persistent compilation cache
(where it lives, how it is turned off, that compiled programs land there)."""

import os
import subprocess
import sys

import pytest

from tests.cli import ROOT

SCRIPT = (
  "import jax, jax.numpy as jnp\n"
  "from agt_jax import runtime\n"
  "print(runtime.enable_compilation_cache())\n"
  "jax.jit(lambda x: jnp.tanh(x) * 2)(jnp.ones(3)).block_until_ready()\n"
)


def _run(tmp_path, **env):
  clean = {
    k: v
    for k, v in os.environ.items()
    if k
    not in ("AGT_JAX_XLA_CACHE", "JAX_COMPILATION_CACHE_DIR", "AGT_JAX_CACHE")
  }
  out = subprocess.run(
    [sys.executable, "-c", SCRIPT],
    env={
      **clean,
      "JAX_PLATFORMS": "cpu",
      "XDG_CACHE_HOME": str(tmp_path / "home-cache"),
      # Store even this tiny program, to see it land in the directory.
      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
      **env,
    },
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert out.returncode == 0, out.stderr[-2000:]
  return out.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize(
  "env, where",
  [
    ({}, "home-cache/agt_jax/xla"),  # the default: beside the rendered data
    ({"AGT_JAX_CACHE": "{tmp}/data"}, "data/xla"),
    ({"AGT_JAX_XLA_CACHE": "{tmp}/mine"}, "mine"),
    ({"JAX_COMPILATION_CACHE_DIR": "{tmp}/jax"}, "jax"),  # jax's own wins
    ({"AGT_JAX_XLA_CACHE": "off"}, None),
  ],
)
def test_compiled_programs_are_kept_where_the_user_says(tmp_path, env, where):
  env = {k: v.format(tmp=tmp_path) for k, v in env.items()}
  got = _run(tmp_path, **env)
  if where is None:
    assert got == "None"
    assert not (tmp_path / "home-cache" / "agt_jax" / "xla").exists()
    return
  assert got == str(tmp_path / where)
  assert any((tmp_path / where).iterdir())  # the program was written there
