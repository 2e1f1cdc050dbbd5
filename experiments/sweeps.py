"""Paper Fig. 7: sweeps of the "others" sampling ratio alpha and of the
distillation temperature T, each point a full AGT run, mean ± std over folds.

  python -m experiments.sweeps --preset quick --folds 0 1 2
  python -m experiments.sweeps --sweep alpha --alphas 0 0.5 0.9 --preset smoke

Resumable; ``results.jsonl``, ``report.md`` and ``fig7.png``.
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np

from experiments import _harness as h

ALPHAS = tuple(round(0.1 * i, 1) for i in range(10))
TEMPERATURES = (0.25, 0.5, 3.0, 5.0, 7.0)


def runs_for(sweeps, alphas, temperatures) -> list[h.Run]:
  runs = []
  if "alpha" in sweeps:
    runs += [
      h.Run(
        f"alpha_{a:g}", {"alpha": a}, "student", {"sweep": "alpha", "value": a}
      )
      for a in alphas
    ]
  if "temperature" in sweeps:
    runs += [
      h.Run(
        f"T_{t:g}",
        {"temperature": t},
        "student",
        {"sweep": "temperature", "value": t},
      )
      for t in temperatures
    ]
  return runs


def run(argv=None) -> int:
  p = argparse.ArgumentParser(
    prog="python -m experiments.sweeps", description=__doc__.split("\n")[0]
  )
  h.add_common_args(p)
  p.add_argument(
    "--sweep",
    nargs="+",
    choices=["alpha", "temperature"],
    default=["alpha", "temperature"],
  )
  p.add_argument("--alphas", type=float, nargs="+", default=list(ALPHAS))
  p.add_argument(
    "--temperatures", type=float, nargs="+", default=list(TEMPERATURES)
  )
  a = p.parse_args(argv)

  from agt_jax import config as config_lib
  from agt_jax.data.registry import parse_data_spec

  workdir = a.workdir or pathlib.Path("runs/sweeps")
  return h.run_and_report(
    runs_for(a.sweep, a.alphas, a.temperatures),
    preset=a.preset,
    prog="experiments.sweeps",
    argv=argv,
    folds=h.parse_folds(a.folds),
    workdir=workdir,
    base=lambda: {**parse_data_spec(a.data), **config_lib.parse_sets(a.set)},
    report=lambda: write_report(h.read_rows(workdir), workdir),
  )


def write_report(rows, workdir) -> pathlib.Path:
  from agt_jax import plotting

  plt = plotting.pyplot()
  workdir = pathlib.Path(workdir)
  lines = ["# Fig. 7: sampling ratio and temperature sweeps", ""]
  lines += h.dataset_line(rows)
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
  for ax, (sweep, symbol) in zip(
    axes, (("alpha", "alpha"), ("temperature", "T"))
  ):
    sub = [r for r in rows if r.get("sweep") == sweep]
    if not sub:
      ax.set_visible(False)
      continue
    values = sorted({r["value"] for r in sub})
    names = [next(r["run"] for r in sub if r["value"] == v) for v in values]
    lines += [f"## {symbol} sweep", ""]
    lines += h.write_table(sub, names=names)
    k = [np.array([r["kappa"] for r in sub if r["value"] == v]) for v in values]
    best = values[int(np.argmax([x.mean() for x in k]))]
    lines += [f"Best mean kappa at {symbol} = {best:g}.", ""]
    x = np.arange(len(values)) if sweep == "temperature" else values
    ax.errorbar(
      x, [v.mean() for v in k], yerr=[v.std() for v in k], fmt="o-", capsize=3
    )
    if sweep == "temperature":
      ax.set_xticks(x)
      ax.set_xticklabels([f"{v:g}" for v in values])
    ax.set_xlabel(symbol)
    ax.set_ylabel("student kappa")
    ax.set_title(
      f"{symbol} sweep ({len({r['fold'] for r in sub})} fold(s))", fontsize=9
    )
  h.save_figure(fig, rows, workdir / "fig7.png")
  lines += ["![Fig. 7](fig7.png)", ""]
  return h.write_report_md(workdir, lines)


if __name__ == "__main__":
  raise SystemExit(run())
