"""Training runs shared by test files: each is made once per test session
(by whichever xdist worker asks first, under a file lock) and only read
afterwards, so two files that need the same smoke run pay for one."""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import shutil
import time
import types


def shared(tmp_path_factory, name: str, make) -> tuple[pathlib.Path, dict]:
  """``(folder, record)``: ``make(folder) -> dict`` run once per session;
  the record (JSON) is what it returned. A failed ``make`` leaves no record,
  so the next caller tries again (and fails the same way, visibly)."""
  base = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    base = base.parent  # the workers' common folder
  root = base / "shared_runs"
  root.mkdir(exist_ok=True)
  with open(root / f"{name}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    folder, record = root / name, root / f"{name}.json"
    if not record.exists():
      shutil.rmtree(folder, ignore_errors=True)
      folder.mkdir()
      record.write_text(json.dumps(make(folder)))
    return folder, json.loads(record.read_text())


def smoke_odir(tmp_path_factory):
  """``experiments.odir --fold 0 --preset smoke`` with flip TTA scored:
  ``(root, out, seconds)``; the run is ``root / "run"``, its image cache
  ``root / "cache"``, ``out`` has ``returncode``, ``stdout``, ``stderr``."""
  from tests.cli import cli
  from tests.test_experiments_odir import SMOKE_ARGS

  def make(root):
    t0 = time.perf_counter()
    out = cli([*SMOKE_ARGS, "--workdir", str(root / "run")], root / "cache")
    assert out.returncode == 0, out.stderr[-3000:]
    return {
      "returncode": out.returncode,
      "stdout": out.stdout,
      "stderr": out.stderr,
      "seconds": time.perf_counter() - t0,
    }

  root, rec = shared(tmp_path_factory, "odir_smoke", make)
  return root, types.SimpleNamespace(**rec), rec["seconds"]
