"""Subprocesses in tests: a hang is detected by lack of progress, never by
total wall time.

A run on a loaded 2-core machine may take many times its usual time and
still be healthy; a hung one writes nothing. So every subprocess a test
starts is watched: its stdout and stderr (written to files, never to a pipe
nobody reads) and any ``watch`` file (a run's ``metrics.jsonl``). When none
of them has grown for ``STALL_S`` seconds, the processes get SIGABRT (with
``PYTHONFAULTHANDLER`` set, each prints every thread's stack), then SIGKILL,
and the test fails with their output.

A ``python -m experiments.*`` run (and a ``python -c`` one whose caller
says ``fork=True``) is forked from a warm parent that has done the CLI's
imports (tests/zygote.py) when its environment differs from the parent's
only in variables read at run time (``RUN_TIME_ENV``); everything else, and
every run with ``AGT_TEST_FORK=0``, starts a fresh interpreter.

With ``AGT_TEST_PROCESS_LOG`` set to a file, each subprocess appends one
JSON line (the test, its argv, how it started, wall seconds, return code)
when it exits: where a suite's subprocess time goes (BENCHMARKS.md, "Test
suite").
"""

from __future__ import annotations

import atexit
import collections
import itertools
import json
import os
import pathlib
import random
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

import pytest

# No new output and no new metrics line for this long means a hang. The
# longest silent stretch of a healthy test run is one compilation or one
# validation pass (well under a minute alone on 2 cores).
STALL_S = float(os.environ.get("AGT_TEST_STALL_S", "300"))


def _mark(paths) -> tuple:
  out = []
  for p in paths:
    try:
      out.append(os.stat(p).st_size)
    except OSError:
      out.append(-1)
  return tuple(out)


# Variables a CLI run reads at run time, never at import: a run whose
# environment differs from a warm parent's only in these may be forked from
# it (XLA_FLAGS, with the fake device count, is read when the child creates
# its jax backend; the parent never does).
RUN_TIME_ENV = frozenset(
  {
    "AGT_JAX_CACHE",
    "AGT_TEST_KILL",
    "AGT_TEST_MODULE",
    "AGT_TEST_PROCESS_LOG",
    "PYTEST_CURRENT_TEST",
    "PYTHONFAULTHANDLER",
    "XLA_FLAGS",
  }
)


class _Zygote:
  """A running tests/zygote.py."""

  def __init__(self, cwd, env, hash_seed: int):
    self._err = tempfile.TemporaryFile()
    self.proc = subprocess.Popen(
      [sys.executable, "-m", "tests.zygote"],
      cwd=cwd,
      env={**env, "PYTHONHASHSEED": str(hash_seed)},
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      stderr=self._err,
      text=True,
    )

  def ready(self) -> bool:
    """Whether it finished its imports (within the hang rule's time)."""
    if not select.select([self.proc.stdout], [], [], STALL_S)[0]:
      return False
    return self.proc.stdout.readline().startswith('{"ready"')

  def fork(self, argv, env, cwd, out, err, status) -> int | None:
    req = dict(
      argv=list(argv), env=env, cwd=str(cwd), stdout=str(out),
      stderr=str(err), status=str(status),
    )  # fmt: skip
    try:
      self.proc.stdin.write(json.dumps(req) + "\n")
      self.proc.stdin.flush()
      return json.loads(self.proc.stdout.readline())["pid"]
    except (OSError, ValueError, KeyError):  # the parent died: no forks
      return None

  def close(self) -> None:
    try:
      self.proc.stdin.close()
    except OSError:
      pass


# (cwd, the environment but RUN_TIME_ENV) -> two warm parents, or None
# where they failed to start; forks alternate between the two. Parents are
# started for an environment at its second run (the first is a fresh
# interpreter: one-off environments never pay for a parent), for at most
# MAX_ZYGOTE_ENVS environments per test process.
MAX_ZYGOTE_ENVS = 2
_zygotes: dict = {}
_seen: collections.Counter = collections.Counter()
_turn = itertools.count()


def _close_zygotes() -> None:
  for pair in _zygotes.values():
    for z in pair or ():
      z.close()


atexit.register(_close_zygotes)


def _zygote_for(argv, cwd, env, fork) -> _Zygote | None:
  if fork is False or os.environ.get("AGT_TEST_FORK", "1") == "0":
    return None
  if len(argv) < 3 or argv[0] != sys.executable or "PYTHONHASHSEED" in env:
    return None
  module_run = argv[1] == "-m" and str(argv[2]).startswith("experiments.")
  if not (module_run or (argv[1] == "-c" and fork)):
    return None
  base = {k: v for k, v in env.items() if k not in RUN_TIME_ENV}
  key = (str(cwd), frozenset(base.items()))
  if key not in _zygotes:
    _seen[key] += 1
    if _seen[key] < 2 or len(_zygotes) >= MAX_ZYGOTE_ENVS:
      return None
    seeds = random.Random().sample(range(1, 2**31), 2)
    pair = [_Zygote(cwd, base, s) for s in seeds]
    if not all([z.ready() for z in pair]):
      for z in pair:
        z.proc.kill()
      pair = None
    _zygotes[key] = pair
  pair = _zygotes[key]
  return None if pair is None else pair[next(_turn) % 2]


class Watched:
  """One process (``subprocess.Popen``, or forked from a warm parent) with
  its output in files. ``fork``: None forks ``-m experiments.*`` runs where
  the environment allows, True ``-c`` runs too, False never."""

  def __init__(self, argv, *, cwd, env=None, stdin=None, fork=None):
    self._dir = tempfile.TemporaryDirectory()
    d = pathlib.Path(self._dir.name)
    self.stdout_path, self.stderr_path = d / "stdout", d / "stderr"
    self._status_path = d / "status"
    env = dict(os.environ if env is None else env)
    env.setdefault("PYTHONFAULTHANDLER", "1")
    argv = [str(a) for a in argv]
    zygote = None if stdin is not None else _zygote_for(argv, cwd, env, fork)
    self.proc, self._rc, self.pid = None, None, None
    with open(self.stdout_path, "w") as out, open(self.stderr_path, "w") as err:
      if zygote is not None:
        self.pid = zygote.fork(
          argv, env, cwd, self.stdout_path, self.stderr_path, self._status_path
        )
      if self.pid is None:
        self.proc = subprocess.Popen(
          argv,
          cwd=cwd,
          env=env,
          stdin=stdin,
          stdout=out,
          stderr=err,
          text=True,
        )
        self.pid = self.proc.pid
    self.forked = self.proc is None
    self._argv, self._start, self._logged = argv, time.monotonic(), False

  @property
  def returncode(self):
    return self._rc

  def _poll(self):
    if self.proc is not None:
      return self.proc.poll()
    if self._rc is None and self._status_path.exists():
      status = int(self._status_path.read_text())
      return os.waitstatus_to_exitcode(status)
    return self._rc

  def poll(self):
    rc = self._rc = self._poll()
    if rc is not None and not self._logged:
      self._logged = True
      log = os.environ.get("AGT_TEST_PROCESS_LOG")
      if log:
        with open(log, "a") as f:
          row = dict(
            test=os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0],
            argv=self._argv[1:],
            forked=self.forked,
            wall_s=round(time.monotonic() - self._start, 2),
            rc=rc,
          )
          f.write(json.dumps(row) + "\n")
    return rc

  def send_signal(self, sig):
    if self.poll() is None:  # never a reaped (maybe reused) pid
      os.kill(self.pid, sig)

  def kill(self):
    self.send_signal(signal.SIGKILL)

  def wait(self, timeout=None):
    """Waits for the exit (``subprocess.TimeoutExpired`` after
    ``timeout``); the return code."""
    if self.proc is not None:
      self.proc.wait(timeout=timeout)
    end = None if timeout is None else time.monotonic() + timeout
    while self.poll() is None:
      if end is not None and time.monotonic() > end:
        raise subprocess.TimeoutExpired(self._argv, timeout)
      time.sleep(0.02)
    return self._rc

  def stdout(self) -> str:
    return self.stdout_path.read_text(errors="replace")

  def stderr(self) -> str:
    return self.stderr_path.read_text(errors="replace")

  def close(self):
    self.poll()  # logs a process the test waited for itself
    self._dir.cleanup()


def _watch(procs, done, *, watch, stall_s, what) -> None:
  """Polls until ``done()``; fails the test (after aborting the processes)
  when none of their outputs and no ``watch`` file has grown for
  ``stall_s`` seconds."""
  stall_s = STALL_S if stall_s is None else stall_s
  paths = [*watch]
  for p in procs:
    paths += [p.stdout_path, p.stderr_path]
  last, since = _mark(paths), time.monotonic()
  while not done():
    time.sleep(0.05)
    now = _mark(paths)
    if now != last:
      last, since = now, time.monotonic()
    elif time.monotonic() - since > stall_s:
      _abort(procs)
      pytest.fail(
        f"no progress for {stall_s:.0f} s {what} (no output, no new line "
        f"in {[str(w) for w in watch]}): a hang\n"
        + "\n".join(
          f"process {i} (rc {p.returncode}): {p.stderr()[-6000:]}"
          for i, p in enumerate(procs)
        )
      )


def wait(
  procs: Sequence[Watched], *, watch=(), stall_s: float | None = None
) -> None:
  """Waits for every process to exit, under the progress rule."""
  _watch(
    procs,
    lambda: all(p.poll() is not None for p in procs),
    watch=watch,
    stall_s=stall_s,
    what="before the processes exited",
  )


def _abort(procs) -> None:
  for p in procs:
    if p.poll() is None:
      p.send_signal(signal.SIGABRT)  # faulthandler prints the stacks
  for p in procs:
    try:
      p.wait(timeout=30)
    except subprocess.TimeoutExpired:
      p.kill()
      p.wait()


def run(
  argv,
  *,
  cwd,
  env=None,
  watch=(),
  stall_s: float | None = None,
  check=False,
  fork=None,
) -> subprocess.CompletedProcess:
  """``subprocess.run(argv, capture_output=True, text=True)`` with the
  progress rule instead of a timeout; ``fork`` as :class:`Watched`'s."""
  p = Watched(argv, cwd=cwd, env=env, fork=fork)
  try:
    wait([p], watch=watch, stall_s=stall_s)
    out = subprocess.CompletedProcess(
      list(argv), p.returncode, p.stdout(), p.stderr()
    )
  finally:
    p.close()
  if check:
    out.check_returncode()
  return out


def metrics_of(args) -> list[pathlib.Path]:
  """The ``metrics.jsonl`` a CLI run with ``args`` writes (``--workdir``),
  to watch for progress."""
  args = [str(a) for a in args]
  if "--workdir" in args:
    return [pathlib.Path(args[args.index("--workdir") + 1]) / "metrics.jsonl"]
  return []


def wait_until(predicate, proc: Watched, *, watch=(), stall_s=None) -> None:
  """Waits until ``predicate()`` holds while ``proc`` runs, under the
  progress rule; fails when ``proc`` exits first."""

  def done():
    if predicate():
      return True
    if proc.poll() is not None:
      pytest.fail(
        f"the process exited (rc {proc.returncode}) before the awaited "
        f"point: {proc.stderr()[-3000:]}"
      )
    return False

  _watch(
    [proc], done, watch=watch, stall_s=stall_s, what="before the awaited point"
  )
