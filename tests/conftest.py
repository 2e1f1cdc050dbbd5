"""Test session setup: CPU only, 8 fake devices, absl flags parsed.

Environment variables must be set before jax is first imported, which is why
this happens at conftest import time.
"""

import os

# Tests compile hundreds of small programs and run each a few steps, so
# LLVM's top optimisation level (XLA:CPU's default, 3) costs more than it
# saves: level 1 took the VAE test from 16 s to 10 s (level 0 to 59 s: too
# little optimisation for its many steps). Every test process and CLI
# subprocess gets it (tests/cli.py); set
# XLA_FLAGS=--xla_backend_optimization_level=3 to test the default code
# generation.
OPT_FLAG = "--xla_backend_optimization_level=1"

# Two test workers share two cores, so each runs OpenMP code (scikit-learn's
# K-Means and gradient boosting) on one thread. At the default (a thread per
# core) a busy neighbour left OpenMP's threads spinning at every barrier:
# the gradient-boosting meta-learner test took 577 s instead of 2 beside
# other work (> 50 s beside two busy processes, 2 s on one thread).
# Inherited by every CLI subprocess.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["JAX_PLATFORMS"] = "cpu"
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_backend_optimization_level" not in _flags:
  _flags += " " + OPT_FLAG
if "xla_force_host_platform_device_count" not in _flags:
  _flags += " --xla_force_host_platform_device_count=8"
os.environ["XLA_FLAGS"] = _flags.strip()

from absl import flags  # noqa: E402

# grain reads absl flags (e.g. in mp_prefetch); pytest never parses them.
flags.FLAGS.mark_as_parsed()

import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

from agt_jax import runtime  # noqa: E402

# Many tests compile the same small steps, in this process, in the other
# xdist workers and in the CLI subprocesses; one persistent compilation
# cache for the whole session compiles each program once (a cached
# executable is the same program, so no result changes). The first process
# (pytest itself, before it starts its workers) makes it and removes it at
# exit; the workers and subprocesses inherit it through the environment.
XLA_CACHE_ENV = "AGT_JAX_TEST_XLA_CACHE"
if not os.environ.get(XLA_CACHE_ENV):
  os.environ[XLA_CACHE_ENV] = tempfile.mkdtemp(prefix="agt_jax_test_xla_")
  atexit.register(shutil.rmtree, os.environ[XLA_CACHE_ENV], True)
jax.config.update("jax_compilation_cache_dir", os.environ[XLA_CACHE_ENV])
# Subprocesses not given JAX_COMPILATION_CACHE_DIR use it too, never ~/.cache.
os.environ[runtime.XLA_CACHE_ENV] = os.environ[XLA_CACHE_ENV]
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@pytest.fixture(scope="session")
def n_devices() -> int:
  return jax.device_count()


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
  """The data cache (``AGT_JAX_CACHE``) of the CLI runs: one per worker, so
  odir5k-synth is rendered once per size, not once per test file."""
  return tmp_path_factory.mktemp("synth-cache")
