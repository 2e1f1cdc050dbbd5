"""The test suite's process runner (tests/processes.py): a run forked from
a warm parent (tests/zygote.py) ends as the same run in a fresh interpreter
does, and a silent process is a hang."""

import os
import signal
import sys

import pytest

from tests import processes
from tests.cli import ROOT, env

SCRIPTS = {
  "exit_code": "print('out'); import sys; print('err', file=sys.stderr); "
  "raise SystemExit(3)",
  "exit_message": "raise SystemExit('bye')",
  "exception": "raise ValueError('x')",
  "keyboard_interrupt": "raise KeyboardInterrupt",
  "sigterm": "import os, signal, time\n"
  "os.kill(os.getpid(), signal.SIGTERM); time.sleep(30)",
  "atexit_and_threads": "import atexit, threading, time\n"
  "atexit.register(lambda: print('atexit', flush=True))\n"
  "threading.Thread(target=lambda: (time.sleep(0.3), print('thread'))).start()",
  "argv_cwd_env": "import os, sys\n"
  "print(sys.argv, os.getcwd() == sys.argv[2], os.environ['AGT_JAX_CACHE'])",
  "devices": "import jax; print(jax.device_count())",
}


@pytest.fixture
def many_parents(monkeypatch):
  # Other test files of this worker may have started parents of their own;
  # the forked path is tested under AGT_TEST_FORK=0 too.
  monkeypatch.setattr(processes, "MAX_ZYGOTE_ENVS", 100)
  monkeypatch.delenv("AGT_TEST_FORK", raising=False)


def _forked(code, tmp_path, *, fork=True, devices=1, args=(), **extra):
  """``(forked, returncode, stdout, stderr)`` of a ``-c`` run that may be
  forked (an environment's first run is a fresh interpreter)."""
  w = processes.Watched(
    [sys.executable, "-c", code, *args],
    cwd=ROOT,
    env=env(tmp_path / "cache", devices, **extra),
    fork=fork,
  )
  try:
    processes.wait([w])
    return w.forked, w.returncode, w.stdout(), w.stderr()
  finally:
    w.close()


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_forked_run_ends_as_a_fresh_interpreter(name, tmp_path, many_parents):
  code, args = SCRIPTS[name], ["a", str(ROOT)]
  devices = 8 if name == "devices" else 1
  fresh = _forked(code, tmp_path, fork=False, devices=devices, args=args)
  _forked("pass", tmp_path)  # the environment's first run
  forked, rc, out, err = _forked(code, tmp_path, devices=devices, args=args)
  assert forked
  assert (rc, out, err) == fresh[1:]
  expected_rc = {
    "exit_code": 3,
    "exit_message": 1,
    "exception": 1,
    "keyboard_interrupt": -signal.SIGINT,
    "sigterm": -signal.SIGTERM,
  }
  assert rc == expected_rc.get(name, 0)
  if name == "devices":
    assert out == "8\n"
  if name == "atexit_and_threads":
    assert out == "thread\natexit\n"
  if name == "exception":
    assert err.startswith("Traceback") and err.endswith("ValueError: x\n")


def test_forked_runs_differ_in_seeds_and_are_killable(tmp_path, many_parents):
  code = (
    "import random, numpy as np\n"
    "print(hash('agt'), random.random(), np.random.rand())"
  )
  _forked("pass", tmp_path)
  runs = [_forked(code, tmp_path) for _ in range(3)]
  assert all(r[0] and r[1] == 0 for r in runs)
  (ha, ra, na), (hb, _, _), (hc, rc, nc) = (r[2].split() for r in runs)
  # Consecutive runs come from the two parents (two hash seeds); every
  # child reseeds random and NumPy as a fresh interpreter seeds them, so
  # two children of one parent (a, c) share the hash seed only.
  assert ha != hb and ha == hc
  assert ra != rc and na != nc
  w = processes.Watched(
    [sys.executable, "-c", "import time; time.sleep(60)"],
    cwd=ROOT,
    env=env(tmp_path / "cache"),
    fork=True,
  )
  try:
    assert w.forked and w.poll() is None
    w.kill()
    assert w.wait(timeout=30) == -signal.SIGKILL
  finally:
    w.close()


def test_variables_read_at_import_get_a_parent_of_their_own(
  tmp_path, many_parents
):
  x64 = "import jax; print(jax.config.jax_enable_x64)"
  _forked("pass", tmp_path)
  assert _forked(x64, tmp_path)[:3] == (True, 0, "False\n")
  # jax reads JAX_ENABLE_X64 at import: never a child of the parent above.
  first = _forked(x64, tmp_path, JAX_ENABLE_X64="1")
  second = _forked(x64, tmp_path, JAX_ENABLE_X64="1")
  assert first[:3] == (False, 0, "True\n")  # its environment's first run
  assert second[:3] == (True, 0, "True\n")  # from a parent with it set
  # A fixed hash seed is the interpreter's: always a fresh one.
  for _ in range(2):
    assert _forked("pass", tmp_path, PYTHONHASHSEED="0")[0] is False
  # `-c` only when the caller asks; nothing with AGT_TEST_FORK=0.
  assert _forked("pass", tmp_path, fork=None)[0] is False
  with pytest.MonkeyPatch.context() as m:
    m.setenv("AGT_TEST_FORK", "0")
    assert _forked("pass", tmp_path)[0] is False


def test_a_silent_process_is_a_hang(tmp_path):
  with pytest.raises(pytest.fail.Exception, match="no progress for 1 s"):
    processes.run(
      [sys.executable, "-c", "import time; time.sleep(60)"],
      cwd=ROOT,
      env={**os.environ, "PYTHONFAULTHANDLER": "1"},
      stall_s=1,
    )
