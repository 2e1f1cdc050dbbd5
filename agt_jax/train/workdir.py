"""The workdir protocol: which runs a workdir may hold, when a run resumes,
what a run writes before its first step, that one live run holds it, and
which checkpoints a resume may trust."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import pathlib
import shutil
import socket
import time

from agt_jax.config import Config, from_json, with_legacy
from agt_jax.errors import ConfigMismatchError, WorkdirBusyError
from agt_jax.io import atomic_write_text

LOCK = ".lock"


def has_checkpoint(workdir: pathlib.Path) -> bool:
  root = workdir / "checkpoints"
  return root.is_dir() and any(
    p.name.isdigit() for d in root.iterdir() if d.is_dir() for p in d.iterdir()
  )


def check(config: Config, workdir: pathlib.Path, resume: bool) -> bool:
  """Refuses a workdir holding another run; writes nothing. Returns whether
  the run resumes: a workdir whose run stopped before its first checkpoint
  (bad data path, bad fold, a crash in the warm-up) is started afresh."""
  cfg_path = workdir / "config.json"
  if not cfg_path.exists():
    return False
  if not has_checkpoint(workdir) and not (workdir / "results.json").exists():
    return False
  saved = from_json(cfg_path.read_text())
  if not resume:
    raise ConfigMismatchError(
      f"{workdir} already holds a run (config.json and checkpoints); pass "
      "--resume to continue it or choose another --workdir."
    )
  diff = config_difference(json.loads(saved.to_json()), config)
  if diff:
    raise ConfigMismatchError(
      f"cannot resume {workdir}: its config differs in {diff} "
      "(saved, requested)."
    )
  return True


def config_difference(saved: dict, config: Config) -> dict:
  """``{field: (saved, requested)}`` for every field where a recorded
  config differs from ``config``; a field the record predates counts as
  its :data:`~agt_jax.config.LEGACY` value (it ran with that behaviour).
  A field only another trainer reads is not compared: the config refuses it
  away from its preset value, so it never changed what this run did."""
  from agt_jax.train.trainers import TRAINERS

  want = json.loads(config.to_json())
  have = with_legacy(saved)
  mine = set(TRAINERS[config.trainer].owns)
  others = {
    k for t in TRAINERS.values() if t.name != config.trainer for k in t.owns
  }
  return {
    k: (have.get(k), want.get(k))
    for k in sorted(set(want) | set(have))
    if have.get(k) != want.get(k) and (k in mine or k not in others)
  }


@contextlib.contextmanager
def lock(workdir: pathlib.Path):
  """Holds ``workdir`` for this process: a second live run on it is
  refused with one line naming the holder.

  An exclusive ``flock`` on ``<workdir>/.lock``; the kernel drops it when
  the process ends however it ends, so a killed run leaves no stale lock
  (the file stays, unlocked, and is reused).
  """
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  fd = os.open(workdir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 512, 0).decode(errors="replace").strip()
      raise WorkdirBusyError(
        f"{workdir} is in use by a live run ({holder or 'holder unknown'}); "
        "wait for it to end, stop it, or pass another --workdir."
      ) from None
    os.ftruncate(fd, 0)
    os.pwrite(
      fd,
      f"pid {os.getpid()} on {socket.gethostname()}, since "
      f"{time.strftime('%Y-%m-%d %H:%M:%S')}".encode(),
      0,
    )
    yield
  finally:
    os.close(fd)  # closing the descriptor releases the lock


# -- checkpoint integrity ---------------------------------------------------------
#
# After a checkpoint is final, the digest of every file in it is written to
# ``<phase dir>.digests/<step>.json``; a resume checks the newest step
# against it and, if a file is missing, cut short or changed, falls back to
# the previous step.


def _digest_dir(directory: pathlib.Path) -> pathlib.Path:
  return directory.with_name(directory.name + ".digests")


def _file_digests(step_dir: pathlib.Path) -> dict:
  out = {}
  for f in sorted(step_dir.rglob("*")):
    if f.is_file():
      h = hashlib.sha256()
      with open(f, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
          h.update(chunk)
      out[str(f.relative_to(step_dir))] = [f.stat().st_size, h.hexdigest()]
  return out


def seal(directory: pathlib.Path, steps) -> None:
  """Writes the digests of the finalised ``steps`` of a checkpoint
  ``directory`` that have none, and drops those of deleted steps."""
  directory = pathlib.Path(directory)
  digests = _digest_dir(directory)
  digests.mkdir(exist_ok=True)
  keep = {str(s) for s in steps}
  for f in digests.glob("*.json"):
    if f.stem not in keep:
      f.unlink(missing_ok=True)
  for s in steps:
    path = digests / f"{s}.json"
    if not path.exists():
      atomic_write_text(path, json.dumps(_file_digests(directory / str(s))))


def damage(directory: pathlib.Path, step: int) -> str | None:
  """Why checkpoint ``step`` of ``directory`` cannot be trusted (a file
  missing, cut short or changed since it was sealed), or None (also when
  it was never sealed: a restore error then decides)."""
  directory = pathlib.Path(directory)
  path = _digest_dir(directory) / f"{step}.json"
  if not path.exists():
    return None
  try:
    want = json.loads(path.read_text())
  except json.JSONDecodeError:
    return None  # a torn digest says nothing about the checkpoint
  step_dir = directory / str(step)
  for rel, (size, _) in want.items():
    f = step_dir / rel
    if not f.is_file():
      return f"{rel} is missing"
    if f.stat().st_size != size:
      return f"{rel} is {f.stat().st_size} bytes, {size} when written"
  have = _file_digests(step_dir)
  for rel, (_, sha) in want.items():
    if have[rel][1] != sha:
      return f"{rel} changed since it was written"
  return None


def claim(config: Config, workdir: pathlib.Path, resume: bool, data) -> None:
  """Writes ``config.json``, ``folds.json`` (and the skipped images); a
  fresh start clears what a run that never checkpointed left behind."""
  workdir.mkdir(parents=True, exist_ok=True)
  if not resume and not has_checkpoint(workdir):
    for name in ("metrics.jsonl", "groups.json", "results.json", "done.json"):
      (workdir / name).unlink(missing_ok=True)
    shutil.rmtree(workdir / "checkpoints", ignore_errors=True)
  atomic_write_text(workdir / "config.json", config.to_json())
  atomic_write_text(
    workdir / "folds.json",
    json.dumps(
      {**data.assignment, "synthetic": data.table.synthetic}, indent=1
    ),
  )
  bad = data.table.meta.get("skipped_images")
  if bad:
    atomic_write_text(
      workdir / "skipped_images.json", json.dumps(bad, indent=1)
    )
