"""Paper Fig. 5: forgetting under alternate group training on CIFAR100-LT.

The teacher alternates over the head (> 100 images), medium (20-100) and tail
(< 20) classes of CIFAR100-LT (imbalance factor 100) in blocks of
``--block`` steps, once with batches of the active group only (alpha 0) and
once with "others" sampled (alpha 0.5). The balanced test split is scored
every ``--block / 2`` steps; per-tier top-1 accuracy and mAP show the
fluctuation (Fig. 5a) and its damping (Fig. 5b).

  python -m experiments.cifar_forgetting --data cifar100:/data/cifar100 --preset quick

``--data cifar100:PATH`` names a folder with ``cifar-100-python.tar.gz`` (or the extracted folder,
or a prepared tfds ``cifar100``); nothing is downloaded. Resumable;
``results.jsonl``, ``report.md`` and ``fig5.png``.
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np

from experiments import _curves
from experiments import _harness as h

# preset -> (model, batch, teacher steps, block)
SETTINGS = {
  "paper": ("resnet18", 128, 12000, 500),
  "quick": ("resnet_small", 64, 900, 100),
  "smoke": ("resnet_tiny", 16, 12, 2),
}
ALPHAS = {"no_others": 0.0, "with_others": 0.5}
LABELS = {
  "no_others": "(a) AGT without sampling others (alpha 0)",
  "with_others": "(b) AGT with sampling others (alpha 0.5)",
}


def run(argv=None) -> int:
  p = argparse.ArgumentParser(
    prog="python -m experiments.cifar_forgetting",
    description=__doc__.split("\n")[0],
  )
  h.add_common_args(p, folds=(0,), data=None, example="cifar100:/data/cifar100")
  p.add_argument(
    "--imbalance-factor", type=int, default=100, choices=[10, 50, 100]
  )
  p.add_argument(
    "--block", type=int, default=None, help="steps per group before switching"
  )
  a = p.parse_args(argv)

  from agt_jax import config as config_lib

  workdir = a.workdir or pathlib.Path("runs/cifar_forgetting")
  model, batch, steps, block = SETTINGS.get(a.preset, SETTINGS["paper"])
  block = a.block or block
  base = {
    "fold_mode": "official",
    "model": model,
    "image_size": 32,
    "crop": 32,
    "batch_size": batch,
    "eval_batch_size": 256,
    "teacher_steps": steps,
    "warmup_steps": 0,
    "max_images": None,
    "grouping": "shot",
    "shot_many": 100,
    "shot_few": 20,
    "reweight": "none",
    "student": False,
    "switch_every": block,
    "eval_every": max(1, block // 2),
    "log_every": max(1, block // 4),
    "together": (),
  }
  runs = [
    h.Run(k, {"alpha": v}, "teacher", {"alpha": v}) for k, v in ALPHAS.items()
  ]
  return h.run_and_report(
    runs,
    preset=a.preset,
    folds=[0],
    workdir=workdir,
    prog="experiments.cifar_forgetting",
    argv=argv,
    base=lambda: {
      **base,
      **_cifar_data(a.data, a.imbalance_factor),
      **config_lib.parse_sets(a.set),
    },
    report=lambda: write_report(workdir, block),
  )


def _cifar_data(spec: str, imbalance_factor: int) -> dict:
  """``--data cifar100:PATH``; ``--imbalance-factor`` picks the LT
  profile."""
  from agt_jax.data.registry import parse_data_spec
  from agt_jax.errors import ConfigError

  out = parse_data_spec(spec)
  if not out["dataset"].startswith("cifar100-lt-"):
    raise ConfigError(
      f"--data: this experiment runs on CIFAR-100; pass "
      f"--data cifar100:PATH, got {spec!r}."
    )
  return {**out, "dataset": f"cifar100-lt-{imbalance_factor}"}


def tiers(run_dir) -> dict[str, list[int]]:
  """Head (> 100 training images), medium (20-100) and tail (< 20)."""
  import json

  counts = np.array(
    json.loads((pathlib.Path(run_dir) / "results.json").read_text())[
      "train_class_counts"
    ]
  )
  return {
    "head": np.flatnonzero(counts > 100).tolist(),
    "medium": np.flatnonzero((counts >= 20) & (counts <= 100)).tolist(),
    "tail": np.flatnonzero(counts < 20).tolist(),
  }


def tier_curves(run_dir) -> dict:
  """``{"step", "head", "medium", "tail", "all", "map"}`` from evaluations
  (a tier without classes, possible on tiny data, is all NaN)."""
  evals = _curves.eval_records(run_dir)
  out = {
    "step": [e["step"] for e in evals],
    "all": [e["top1"] for e in evals],
    "map": [e["map"] for e in evals],
  }
  for tier, classes in tiers(run_dir).items():
    out[tier] = [
      float(np.nanmean(np.array(e["top1_per_class"], float)[classes]))
      if classes
      else float("nan")
      for e in evals
    ]
  return out


def write_report(workdir, block) -> pathlib.Path:
  from agt_jax import plotting

  plt = plotting.pyplot()
  workdir = pathlib.Path(workdir)
  rows = h.read_rows(workdir)
  lines = ["# Fig. 5: forgetting under alternate group training", ""]
  lines += h.dataset_line(rows)
  lines += [
    f"Groups switch every {block} steps (head -> medium -> tail). "
    "Fluctuation = mean |change| of top-1 accuracy between "
    "consecutive evaluations (lower is steadier).",
    "",
    "| run | final top-1 | head | medium | tail | mAP | fluctuation "
    "(all) | fluctuation (tail) |",
    "|---|---|---|---|---|---|---|---|",
  ]
  fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
  for ax, name in zip(axes, ALPHAS):
    run_dir = workdir / name / "fold0"
    if not (run_dir / "results.json").exists():
      continue
    c = tier_curves(run_dir)
    if not c["step"]:
      continue
    lines.append(
      f"| {name} | {c['all'][-1]:.3f} | {c['head'][-1]:.3f} | "
      f"{c['medium'][-1]:.3f} | {c['tail'][-1]:.3f} | {c['map'][-1]:.3f} | "
      f"{_curves.fluctuation(c['all']):.3f} | "
      f"{_curves.fluctuation(c['tail']):.3f} |"
    )
    _curves.shade_groups(
      ax,
      _curves.teacher_records(run_dir),
      names=[t for t, c in tiers(run_dir).items() if c],
    )
    for k, style in (
      ("head", "-"),
      ("medium", "-"),
      ("tail", "-"),
      ("all", "--"),
      ("map", ":"),
    ):
      ax.plot(c["step"], c[k], style, label=k if k != "map" else "mAP")
    ax.set_title(LABELS[name], fontsize=9)
    ax.set_xlabel("step")
  axes[0].set_ylabel("validation top-1 accuracy / mAP")
  axes[1].legend(fontsize=7, loc="upper left")
  h.save_figure(fig, rows, workdir / "fig5.png")
  lines += ["", "![Fig. 5](fig5.png)", ""]
  return h.write_report_md(workdir, lines)


if __name__ == "__main__":
  raise SystemExit(run())
