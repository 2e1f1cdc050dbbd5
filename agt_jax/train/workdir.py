"""The workdir protocol: which runs a workdir may hold, when a run resumes,
and what a run writes before its first step."""

from __future__ import annotations

import json
import pathlib
import shutil

from agt_jax.config import Config, from_json
from agt_jax.errors import ConfigMismatchError
from agt_jax.io import atomic_write_text


def has_checkpoint(workdir: pathlib.Path) -> bool:
  root = workdir / "checkpoints"
  return root.is_dir() and any(p.name.isdigit() for d in root.iterdir()
                               if d.is_dir() for p in d.iterdir())


def check(config: Config, workdir: pathlib.Path, resume: bool
                   ) -> bool:
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
        "--resume to continue it or choose another --workdir.")
  if saved != config:
    diff = {k: (getattr(saved, k), getattr(config, k))
            for k in json.loads(config.to_json())
            if getattr(saved, k) != getattr(config, k)}
    raise ConfigMismatchError(
        f"cannot resume {workdir}: its config differs in {diff} "
        "(saved, requested).")
  return True


def claim(config: Config, workdir: pathlib.Path, resume: bool,
                   data) -> None:
  """Writes ``config.json``, ``folds.json`` (and the skipped images); a
  fresh start clears what a run that never checkpointed left behind."""
  workdir.mkdir(parents=True, exist_ok=True)
  if not resume and not has_checkpoint(workdir):
    for name in ("metrics.jsonl", "groups.json", "results.json",
                 "done.json"):
      (workdir / name).unlink(missing_ok=True)
    shutil.rmtree(workdir / "checkpoints", ignore_errors=True)
  atomic_write_text(workdir / "config.json", config.to_json())
  atomic_write_text(workdir / "folds.json", json.dumps(
      {**data.assignment, "synthetic": data.table.synthetic}, indent=1))
  bad = data.table.meta.get("skipped_images")
  if bad:
    atomic_write_text(workdir / "skipped_images.json",
                      json.dumps(bad, indent=1))
