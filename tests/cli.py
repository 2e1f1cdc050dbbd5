"""Running the experiment CLIs as a user does: a subprocess with the test's
data cache and the session's compilation cache, watched for progress
(tests/processes.py), and the rows it appended."""

from __future__ import annotations

import json
import os
import pathlib
import sys

from tests import processes

ROOT = pathlib.Path(__file__).resolve().parents[1]


def env(cache, devices=1, **extra):
  """The environment of a CLI subprocess: CPU (``devices`` fake ones) with
  the session's other XLA flags, the test's data cache, and the session's
  one persistent XLA compilation cache (tests/conftest.py; every CLI run
  compiles the same few steps; a cached executable is the same program, so
  results are unchanged, only the minutes of compiling go); ``extra``
  variables last."""
  from tests.conftest import XLA_CACHE_ENV

  flags = [
    f for f in os.environ["XLA_FLAGS"].split() if "device_count" not in f
  ]
  if devices > 1:
    flags.append(f"--xla_force_host_platform_device_count={devices}")
  e = dict(os.environ)
  e.update(
    JAX_PLATFORMS="cpu",
    AGT_JAX_CACHE=str(cache),
    PYTHONPATH=str(ROOT),
    JAX_COMPILATION_CACHE_DIR=os.environ[XLA_CACHE_ENV],
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    XLA_FLAGS=" ".join(flags),
  )
  e.update(extra)
  return e


def run_cli(module, args, cache):
  """``python -m module *args``, watched; a finished
  :class:`processes.Watched`."""
  return processes.run(
    [sys.executable, "-m", module, *args],
    cwd=ROOT,
    env=env(cache),
    watch=processes.metrics_of(args),
  )


def cli(args, cache):
  """``python -m experiments.odir *args``."""
  return run_cli("experiments.odir", args, cache)


def rows(workdir):
  """The rows of ``workdir/results.jsonl``, in order."""
  return [
    json.loads(l) for l in (workdir / "results.jsonl").read_text().splitlines()
  ]
