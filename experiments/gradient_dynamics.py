"""Paper Fig. 6: tail-class positive and negative gradients, and tail mAP,
during alternate group training, without and with gradient re-weighting.

The teacher alternates over shot-based head / medium / tail groups (as in the
figure) with "others" sampled; the per-class batch statistics
``pos_j = mean y(p - 1)`` and ``neg_j = mean (1 - y) p`` of the real train
step are logged every ``log_every`` steps and tail mAP is scored every
``eval_every`` steps (the validation split carved from the training fold).

  python -m experiments.gradient_dynamics --preset quick
  python -m experiments.gradient_dynamics --data odir5k:/data/odir5k --preset paper

Resumable; ``results.jsonl``, ``report.md`` and ``fig6.png``.
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np

from experiments import _curves
from experiments import _harness as h

RUNS = {"no_rw": "none", "rw": "gradient"}
LABELS = {
  "no_rw": "(a) without gradient re-weighting",
  "rw": "(b) with gradient re-weighting",
}
# preset -> (log_every, eval_every, switch_every)
CADENCE = {"paper": (10, 100, 50), "quick": (5, 50, 25), "smoke": (1, 2, 2)}


def run(argv=None) -> int:
  p = argparse.ArgumentParser(
    prog="python -m experiments.gradient_dynamics",
    description=__doc__.split("\n")[0],
  )
  h.add_common_args(p, folds=(0,))
  a = p.parse_args(argv)

  from agt_jax import config as config_lib
  from agt_jax.data.registry import parse_data_spec

  workdir = a.workdir or pathlib.Path("runs/gradient_dynamics")
  log_every, eval_every, switch = CADENCE.get(a.preset, CADENCE["paper"])
  base = {
    "grouping": "shot",
    "student": False,
    "log_every": log_every,
    "eval_every": eval_every,
    "switch_every": switch,
  }
  runs = [
    h.Run(k, {"reweight": v}, "teacher", {"reweight": v})
    for k, v in RUNS.items()
  ]
  folds = h.parse_folds(a.folds)
  return h.run_and_report(
    runs,
    preset=a.preset,
    folds=folds,
    workdir=workdir,
    prog="experiments.gradient_dynamics",
    argv=argv,
    base=lambda: {
      **base,
      **parse_data_spec(a.data),
      **config_lib.parse_sets(a.set),
    },
    report=lambda: write_report(workdir, folds[0]),
  )


def tail_dynamics(run_dir) -> dict:
  """Tail-class mean |pos| and neg per logged step, tail mAP per eval."""
  groups = _curves.groups_of(run_dir)
  tail = list(groups["groups"][-1])
  recs = _curves.teacher_records(run_dir)
  evals = _curves.eval_records(run_dir)
  pos = np.abs(np.array([r["pos"] for r in recs]))[:, tail].mean(1)
  neg = np.array([r["neg"] for r in recs])[:, tail].mean(1)
  tail_map = [float(np.nanmean(np.array(e["ap"], float)[tail])) for e in evals]
  return {
    "tail": [groups["names"][-1]],
    "step": [r["step"] for r in recs],
    "pos": pos.tolist(),
    "neg": neg.tolist(),
    "records": recs,
    "eval_step": [e["step"] for e in evals],
    "tail_map": tail_map,
    "group_names": ["+".join(n) for n in groups["names"]],
  }


def write_report(workdir, fold: int = 0) -> pathlib.Path:
  from agt_jax import plotting

  plt = plotting.pyplot()
  workdir = pathlib.Path(workdir)
  rows = h.read_rows(workdir)
  lines = ["# Fig. 6: tail-class gradient dynamics", ""]
  lines += h.dataset_line(rows)
  lines += [
    f"Curves of fold {fold}. |pos| and neg are batch means over the "
    "tail group's classes of the logged per-class statistics.",
    "",
    "| run | tail classes | mean \\|pos\\| | mean neg | \\|pos\\|/neg "
    "| final tail mAP | max tail mAP |",
    "|---|---|---|---|---|---|---|",
  ]
  fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
  for ax, name in zip(axes, RUNS):
    run_dir = workdir / name / f"fold{fold}"
    if not (run_dir / "results.json").exists():
      continue
    d = tail_dynamics(run_dir)
    pos, neg = np.mean(d["pos"]), np.mean(d["neg"])
    tm = d["tail_map"] or [float("nan")]
    lines.append(
      f"| {name} | {', '.join(d['tail'][0])} | {pos:.4f} | "
      f"{neg:.4f} | {pos / max(neg, 1e-12):.3f} | {tm[-1]:.3f} | "
      f"{np.nanmax(tm):.3f} |"
    )
    _curves.shade_groups(ax, d["records"], names=d["group_names"])
    ax.plot(d["step"], d["pos"], color="#228833", label="tail |pos|")
    ax.plot(d["step"], d["neg"], color="#cc3311", label="tail neg")
    ax.set_xlabel("teacher step")
    ax.set_title(LABELS[name], fontsize=9)
    ax2 = ax.twinx()
    ax2.plot(
      d["eval_step"],
      d["tail_map"],
      "o-",
      color="#333333",
      ms=3,
      label="tail mAP",
    )
    ax2.set_ylim(0, 1)
    if name == "rw":
      ax2.set_ylabel("tail mAP")
      handles = ax.get_legend_handles_labels()
      h2 = ax2.get_legend_handles_labels()
      ax.legend(
        handles[0] + h2[0], handles[1] + h2[1], fontsize=7, loc="upper right"
      )
  axes[0].set_ylabel("mean gradient magnitude")
  h.save_figure(fig, rows, workdir / "fig6.png")
  lines += ["", "![Fig. 6](fig6.png)", ""]
  return h.write_report_md(workdir, lines)


if __name__ == "__main__":
  raise SystemExit(run())
