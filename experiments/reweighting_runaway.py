"""The runaway of the paper's re-weighting rule on a linear model, per rule.

A linear multi-label classifier on fixed features (ODIR-like class shares) is
trained with Adam under each negative re-weighting rule; the figure shows the
mean predicted probability on each class's negatives over steps, the table
the range at the end and the ODIR kappa. Seconds on a CPU.

  python -m experiments.reweighting_runaway --out docs/reweighting_runaway.png

See docs/reweighting.md for the algebra.
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np

# (label, rule, beta)
RULES = (
  ("plain BCE", "bce", 2.0),
  ("paper, beta 2", "gradient", 2.0),
  ("paper, beta 1", "gradient", 1.0),
  ("paper, beta 0.5", "gradient", 0.5),
  ("count-based, beta 2", "count", 2.0),
  ("feedback, beta 2 (stable)", "feedback", 2.0),
  ("EQLv2", "eqlv2", 2.0),
)


def run(argv=None) -> int:
  p = argparse.ArgumentParser(
    prog="python -m experiments.reweighting_runaway",
    description=__doc__.split("\n")[0],
  )
  p.add_argument(
    "--out", type=pathlib.Path, default=pathlib.Path("reweighting_runaway.png")
  )
  p.add_argument("--steps", type=int, default=20000)
  p.add_argument("--lr", type=float, default=1e-3)
  p.add_argument("--seeds", type=int, default=3)
  a = p.parse_args(argv)

  from agt_jax import plotting

  plt = plotting.pyplot()

  from agt_jax import metrics
  from agt_jax import reweighting_dynamics as rd

  fig, grid = plt.subplots(2, 4, figsize=(10, 5.2), sharey=True)
  axes = grid.ravel()
  axes[-1].axis("off")
  lines = [
    "| rule | mean p on negatives at the end (per class, min-max over "
    "seeds) | kappa (mean over seeds) |",
    "|---|---|---|",
  ]
  for ax, (label, rule, beta) in zip(axes, RULES):
    finals, kappas = [], []
    for seed in range(a.seeds):
      x, y = rd.make_problem(seed=seed)
      r = rd.train_linear(
        x,
        y,
        rule=rule,
        beta=beta,
        lr=a.lr,
        steps=a.steps,
        record_every=a.steps // 100,
        seed=seed,
      )
      finals.append(r["p_neg"][-1])
      kappas.append(metrics.odir_score(y, r["probs"])["kappa"])
      for j in range(y.shape[1]):
        ax.plot(
          r["steps"],
          r["p_neg"][:, j],
          lw=0.7,
          color=f"C{j}",
          alpha=0.8,
          label="NDGCAHMO"[j] if seed == 0 else None,
        )
    finals = np.stack(finals)
    lines.append(
      f"| {label} | {finals.min():.2f}-{finals.max():.2f} | "
      f"{np.mean(kappas):.2f} |"
    )
    ax.set_title(label, fontsize=8)
    ax.set_xlabel("step", fontsize=8)
    ax.set_ylim(0, 1)
    ax.tick_params(labelsize=7)
  for ax in grid[:, 0]:
    ax.set_ylabel("mean p on negatives", fontsize=8)
  handles, names = axes[0].get_legend_handles_labels()
  axes[-1].legend(
    handles, names, fontsize=8, ncol=2, loc="center", title="class"
  )
  fig.suptitle(
    f"Linear model, Adam {a.lr:g}, batch 64, {a.seeds} seeds "
    "(synthetic features)",
    fontsize=9,
  )
  fig.tight_layout()
  a.out.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(a.out, dpi=110)
  print("\n".join(lines))
  print(f"figure: {a.out}")
  return 0


if __name__ == "__main__":
  raise SystemExit(run())
