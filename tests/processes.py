"""Subprocesses in tests: a hang is detected by lack of progress, never by
total wall time.

A run on a loaded 2-core machine may take many times its usual time and
still be healthy; a hung one writes nothing. So every subprocess a test
starts is watched: its stdout and stderr (written to files, never to a pipe
nobody reads) and any ``watch`` file (a run's ``metrics.jsonl``). When none
of them has grown for ``STALL_S`` seconds, the processes get SIGABRT (with
``PYTHONFAULTHANDLER`` set, each prints every thread's stack), then SIGKILL,
and the test fails with their output.

With ``AGT_TEST_PROCESS_LOG`` set to a file, each subprocess appends one
JSON line (the test, its argv, wall seconds, return code) when it exits:
where a suite's subprocess time goes (BENCHMARKS.md, "Test suite").
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
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


class Watched:
  """One ``subprocess.Popen`` with its output in files."""

  def __init__(self, argv, *, cwd, env=None, stdin=None):
    self._dir = tempfile.TemporaryDirectory()
    d = pathlib.Path(self._dir.name)
    self.stdout_path, self.stderr_path = d / "stdout", d / "stderr"
    env = dict(os.environ if env is None else env)
    env.setdefault("PYTHONFAULTHANDLER", "1")
    with open(self.stdout_path, "w") as out, open(self.stderr_path, "w") as err:
      self.proc = subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=env,
        stdin=stdin,
        stdout=out,
        stderr=err,
        text=True,
      )
    self._argv, self._start, self._logged = list(argv), time.monotonic(), False

  @property
  def returncode(self):
    return self.proc.returncode

  def poll(self):
    rc = self.proc.poll()
    if rc is not None and not self._logged:
      self._logged = True
      log = os.environ.get("AGT_TEST_PROCESS_LOG")
      if log:
        with open(log, "a") as f:
          row = dict(
            test=os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0],
            argv=[str(a) for a in self._argv[1:]],
            wall_s=round(time.monotonic() - self._start, 2),
            rc=rc,
          )
          f.write(json.dumps(row) + "\n")
    return rc

  def send_signal(self, sig):
    self.proc.send_signal(sig)

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
      p.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
      p.proc.kill()
      p.proc.wait()


def run(
  argv, *, cwd, env=None, watch=(), stall_s: float | None = None, check=False
) -> subprocess.CompletedProcess:
  """``subprocess.run(argv, capture_output=True, text=True)`` with the
  progress rule instead of a timeout."""
  p = Watched(argv, cwd=cwd, env=env)
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
