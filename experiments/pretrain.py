"""Pretrain an encoder with plain BCE on the synthetic pretraining stand-in.

The paper starts every method from pretrained weights (ImageNet, then
FGADR); neither can be downloaded here. This trains the preset's encoder
with plain BCE on ``odir5k-synth-pretrain``: label rows resampled from the
ODIR-5K label table and rendered with a disjoint render seed under new image
ids, so it shares no image and no render seed with odir5k-synth (it shares
the label table and the renderer; ``agt_jax.data.synth.PRETRAIN_NOTE``). The
validation-selected variables are written as an ``--init`` checkpoint that
every method of a comparison starts from (grouping features too)::

  python -m experiments.pretrain --preset quick
  python -m experiments.odir --fold 0 --init runs/pretrain/checkpoints/teacher_best

A finished run is reused on re-launch; an interrupted one resumes.

``--task fgadr`` is the paper's own pretraining stage (§3.8, after RLKD):
the encoder with a light lesion segmentation decoder and a DR grade head,
trained jointly on FGADR's Seg-set (``--data fgadr:PATH``) or its synthetic
stand-in (``--data fgadr-synth``, the default), 20% of the images held out
for the Dice per lesion and the grade's quadratic kappa::

  python -m experiments.pretrain --task fgadr --preset quick
  python -m experiments.odir --fold 0 --init runs/pretrain_fgadr/checkpoints/multitask
"""

from __future__ import annotations

import argparse
import json
import pathlib

from experiments import _harness as h

# Pretraining steps per preset: the validation loss and final score have
# flattened by then at these sizes (the run's metrics.jsonl shows the curve).
STEPS = {"smoke": 6, "quick": 2400, "paper": 12000}
# The multi-task stage's steps per preset.
FGADR_STEPS = {"smoke": 4, "quick": 1200, "paper": 6000}
LABEL = (
  "pretrained on odir5k-synth-pretrain (synthetic stand-in for the "
  "paper's ImageNet + FGADR pretraining)"
)


def pretrain_run(preset: str, steps: int | None = None) -> h.Run:
  """The pretraining run: plain BCE, one head, no student."""
  return h.Run(
    "pretrain",
    {
      "dataset": "odir5k-synth-pretrain",
      "data_dir": None,
      "grouping": "single",
      "reweight": "none",
      "loss": "agt",
      # One group: the sampler is instance-balanced and there is no prior
      # shift to correct; stated so the run's record does not follow the
      # library default.
      "prior_correction": "none",
      "student": False,
      "fold": 0,
      "teacher_steps": steps or STEPS.get(preset, STEPS["paper"]),
    },
    "teacher",
  )


def checkpoint(workdir: pathlib.Path) -> pathlib.Path:
  """The ``--init`` folder of a finished pretraining run."""
  best = pathlib.Path(workdir) / "checkpoints" / "teacher_best"
  return (
    best if best.is_dir() else pathlib.Path(workdir) / "checkpoints" / "teacher"
  )


def ensure(
  preset: str,
  workdir: pathlib.Path,
  *,
  steps: int | None = None,
  sets: dict | None = None,
) -> tuple[pathlib.Path, dict]:
  """Trains (or reuses) the pretraining run in ``workdir``; returns its
  ``--init`` folder and its row (test and validation scores)."""
  run = pretrain_run(preset, steps)
  rows = h.run_grid(
    [run],
    preset=preset,
    folds=[0],
    base={**(sets or {}), **run.overrides},
    workdir=workdir,
    subdir=False,
  )
  return checkpoint(workdir), rows[0]


def run(argv=None) -> int:
  p = argparse.ArgumentParser(
    prog="python -m experiments.pretrain", description=__doc__.split("\n")[0]
  )
  p.add_argument("--preset", default="quick", help="paper | quick | smoke")
  p.add_argument(
    "--steps",
    type=int,
    default=None,
    help=f"training steps (default per preset: {STEPS})",
  )
  p.add_argument(
    "--task",
    choices=["bce", "fgadr"],
    default="bce",
    help="bce: plain BCE on odir5k-synth-pretrain; fgadr: lesion "
    "segmentation + DR grade (the paper's FGADR stage)",
  )
  p.add_argument(
    "--data",
    default="fgadr-synth",
    metavar="NAME[:PATH]",
    help="--task fgadr: fgadr-synth (offline) or fgadr:PATH",
  )
  p.add_argument("--workdir", type=pathlib.Path, default=None)
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
  a = p.parse_args(argv)
  from agt_jax import config as config_lib
  from experiments import _cli

  if a.task == "fgadr":
    return _cli.guarded(
      lambda: run_fgadr(a, config_lib.parse_sets(a.set)),
      prog="experiments.pretrain",
      argv=argv,
    )
  a.workdir = a.workdir or pathlib.Path("runs/pretrain")

  def go() -> int:
    path, row = ensure(
      a.preset, a.workdir, steps=a.steps, sets=config_lib.parse_sets(a.set)
    )
    print(
      json.dumps(
        {
          k: row[k]
          for k in ("dataset", "kappa", "final", "macro_auc", "val_final")
          if k in row
        }
      ),
      flush=True,
    )
    print(f"init checkpoint: {path}", flush=True)
    return 0

  return _cli.guarded(go, prog="experiments.pretrain", argv=argv)


def fgadr_config(preset: str, steps: int | None, data: str, sets: dict):
  """The multi-task stage's config: the preset's encoder, crops and
  optimiser, ``steps`` steps, the segmentation dataset."""
  from agt_jax import config as config_lib
  from agt_jax.data.registry import parse_data_spec

  return config_lib.validate(
    config_lib.get_config(
      preset,
      **{
        **parse_data_spec(data),
        "grouping": "single",
        "student": False,
        "prior_correction": "none",
        "fold": 0,
        "teacher_steps": steps or FGADR_STEPS.get(preset, FGADR_STEPS["paper"]),
        **sets,
      },
    )
  )


def run_fgadr(a, sets: dict) -> int:
  """Trains (or reuses) the multi-task stage; prints its scores and the
  ``--init`` folder."""
  from agt_jax.data import fgadr
  from agt_jax.train import multitask
  from agt_jax.train import workdir as workdir_lib

  config = fgadr_config(a.preset, a.steps, a.data, sets)
  wd = a.workdir or pathlib.Path("runs/pretrain_fgadr")
  done = wd / "results.json"
  with workdir_lib.lock(wd):
    saved = wd / "config.json"
    if saved.exists():
      diff = workdir_lib.config_difference(
        json.loads(saved.read_text()), config
      )
      if diff:
        from agt_jax.errors import ConfigMismatchError

        raise ConfigMismatchError(
          f"{wd} holds a pretraining run with another config (differs in "
          f"{sorted(diff)}); pass another --workdir."
        )
    else:
      saved.write_text(config.to_json())
    if done.exists():
      results = json.loads(done.read_text())
      print(f"{wd}: finished, reused", flush=True)
    else:
      table, images, masks = fgadr.load(
        config.dataset,
        data_dir=config.data_dir,
        size=config.image_size,
        cache_dir=config.cache_dir,
        seed=config.seed,
        max_images=config.max_images,
      )
      results = multitask.train(
        config,
        table,
        images,
        masks,
        wd,
        resume=(wd / "checkpoints" / "multitask").exists(),
      )
  t = results["test"]
  print(
    json.dumps(
      {
        "dataset": results["dataset"],
        "synthetic": results["synthetic"],
        "dice": {k: round(v, 4) for k, v in t["dice"].items()},
        "mean_dice": round(t["mean_dice"], 4),
        "grade_kappa": round(t["grade_kappa"], 4),
        "grade_accuracy": round(t["grade_accuracy"], 4),
      }
    ),
    flush=True,
  )
  print(f"init checkpoint: {results['init']}", flush=True)
  return 0


if __name__ == "__main__":
  raise SystemExit(run())
