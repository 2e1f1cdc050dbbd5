"""A warm parent for the test suite's CLI runs: a process that has imported
what an experiment CLI imports and forks one child per run.

A ``python -m experiments.odir`` smoke run spends about a third of its time
importing jax, flax, optax, orbax, grain, scikit-learn, matplotlib and the
project (BENCHMARKS.md, "Test suite"); the suite starts dozens. A forked
child starts with those imports done and is otherwise run as ``python -m``
or ``python -c`` would run it: its own pid, process exit status and signals,
the requested argv, environment and working directory, stdin from
``/dev/null``, stdout and stderr into the given files, ``SystemExit`` codes,
uncaught tracebacks, ``KeyboardInterrupt`` ending by SIGINT, thread joins
and ``atexit`` handlers at exit, fresh ``random``/NumPy seeds and
faulthandler when ``PYTHONFAULTHANDLER`` is set. Nothing is initialised
before the fork but imports (no jax backend: ``XLA_FLAGS`` such as the fake
device count are read by the child), and the parent has one thread.

tests/processes.py decides which runs may fork (the environment may differ
from the parent's only in variables read at run time) and keeps two parents
with different hash seeds, alternating, so that two runs compared with each
other usually differ in ``PYTHONHASHSEED`` as fresh interpreters do.

Protocol (stdin/stdout, one JSON object per line): a request ``{"argv",
"env", "cwd", "stdout", "stderr", "status"}`` is answered by ``{"pid": N}``;
when child N exits, its wait status is written (atomically) to the
``status`` file as text. The parent exits when its stdin closes.
"""

from __future__ import annotations

import atexit
import faulthandler
import importlib
import json
import os
import runpy
import select
import signal
import sys
import threading
import traceback
import types

from agt_jax import io

# What the experiment CLIs import before their first step (their module
# level and the trainers), so that a child imports next to nothing.
PRELOAD = (
  "numpy",
  "jax",
  "jax.numpy",
  "flax.linen",
  "optax",
  "chex",
  "orbax.checkpoint",
  "grain",
  "sklearn.cluster",
  "sklearn.decomposition",
  "sklearn.metrics",
  "sklearn.linear_model",
  "matplotlib",
  "tqdm",
  "agt_jax.plotting",
  "agt_jax.train",
  "agt_jax.train.loop",
  "agt_jax.train.agt",
  "agt_jax.train.outputs",
  "experiments._cli",
  "experiments._harness",
)


def _exit_code(e: SystemExit) -> int:
  """What the interpreter makes of ``raise SystemExit(code)``."""
  if e.code is None:
    return 0
  if isinstance(e.code, int):
    return e.code
  print(e.code, file=sys.stderr)
  return 1


def _child(req: dict) -> None:
  """Runs in the forked child; never returns."""
  code = 70  # EX_SOFTWARE, should the set-up itself fail
  try:
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd, path in ((1, req["stdout"]), (2, req["stderr"])):
      f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
      os.dup2(f, fd)
      os.close(f)
    os.close(null)
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    if os.environ.get("PYTHONFAULTHANDLER"):
      faulthandler.enable()
    # ``random`` reseeds itself in a forked child; NumPy's global
    # generator does not.
    if "numpy" in sys.modules:
      sys.modules["numpy"].random.seed()
    argv = req["argv"]
    code = 0
    try:
      if argv[1] == "-m":
        sys.argv = [argv[2], *argv[3:]]  # run_module sets [0] to the file
        runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
      else:  # "-c"
        sys.argv = ["-c", *argv[3:]]
        main = types.ModuleType("__main__")
        sys.modules["__main__"] = main
        exec(compile(argv[2], "<string>", "exec"), main.__dict__)
    except SystemExit as e:
      code = _exit_code(e)
    except BaseException as e:  # printed without this function's frame
      traceback.print_exception(type(e), e, e.__traceback__.tb_next)
      code = -signal.SIGINT if isinstance(e, KeyboardInterrupt) else 1
    # The interpreter's own exit: join non-daemon threads, atexit, flush.
    threading._shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
      try:
        stream.flush()
      except Exception:
        pass
    if code == -signal.SIGINT:  # as an uncaught KeyboardInterrupt ends
      signal.signal(signal.SIGINT, signal.SIG_DFL)
      os.kill(os.getpid(), signal.SIGINT)
  finally:
    os._exit(code & 0xFF)


def _reap(status_files: dict) -> None:
  while status_files:
    try:
      pid, status = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
      return
    if pid == 0:
      return
    path = status_files.pop(pid, None)
    if path is not None:
      try:
        io.atomic_write_text(path, str(status))
      except OSError:  # the test has closed its watch meanwhile
        pass


def serve() -> None:
  for name in PRELOAD:
    importlib.import_module(name)
  status_files: dict[int, str] = {}
  out = sys.stdout
  fd = sys.stdin.fileno()
  buf = b""
  print(json.dumps({"ready": os.getpid()}), file=out, flush=True)
  while True:
    ready, _, _ = select.select([fd], [], [], 0.02)
    _reap(status_files)
    if not ready:
      continue
    chunk = os.read(fd, 1 << 16)
    if not chunk:  # the test worker is gone
      return
    buf += chunk
    while b"\n" in buf:
      line, buf = buf.split(b"\n", 1)
      if not line.strip():
        continue
      req = json.loads(line)
      pid = os.fork()
      if pid == 0:
        _child(req)
      status_files[pid] = req["status"]
      print(json.dumps({"pid": pid}), file=out, flush=True)


if __name__ == "__main__":
  serve()
