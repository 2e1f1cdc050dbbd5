"""Paper Table 1: AGT against the long-tailed baselines on ODIR-5K (or the
offline odir5k-synth), every method on the same data, encoder, schedule and
training loop, one column per backbone.

  python -m experiments.odir_table1 --folds all --preset paper
  python -m experiments.odir_table1 --preset quick --folds 0 1 2
  python -m experiments.odir_table1 --preset smoke --folds 0 --methods bce ours

Each method is a set of config overrides (``METHODS``), so any of them is
also one ``python -m experiments.odir --set ...`` away. Finished runs are
skipped on re-launch; results go to ``results.jsonl``, ``report.md`` and
``table1_<backbone>.png``.
"""

from __future__ import annotations

import argparse
import pathlib

from experiments import _harness as h
from experiments import _paper

# name -> (label, overrides, scored model). Plain baselines train one head
# (grouping single) on instance-balanced batches and report that model.
_PLAIN = {"grouping": "single", "reweight": "none", "student": False}
METHODS = {
  "bce": ("Instance-balanced BCE", {**_PLAIN}, "teacher"),
  "cb_sampling": (
    "Class-balanced sampling",
    # as published: the sampler's prior shift is left uncorrected
    {**_PLAIN, "teacher_sampler": "class_balanced", "prior_correction": "none"},
    "teacher",
  ),
  "focal": ("Focal loss", {**_PLAIN, "loss": "focal"}, "teacher"),
  "cb": (
    "Class-balanced (effective number)",
    {**_PLAIN, "loss": "cb"},
    "teacher",
  ),
  "db": ("Distribution-balanced", {**_PLAIN, "loss": "db"}, "teacher"),
  "ib": (
    "Influence-balanced (multi-label)",
    {**_PLAIN, "loss": "ib"},
    "teacher",
  ),
  "eqlv2": ("EQLv2 (multi-label)", {**_PLAIN, "loss": "eqlv2"}, "teacher"),
  "ride": (
    "RIDE, 3 experts (multi-label)",
    {**_PLAIN, "loss": "ride", "experts": 3},
    "teacher",
  ),
  "bags": (
    "BAGS-style grouped heads",
    {"grouping": "shot", "loss": "bags", "reweight": "none", "student": False},
    "teacher",
  ),
  "multi_teacher_kd": (
    "Multi-teacher KD (RSKD-style, shot subsets)",
    {
      "teacher": "multi",
      "grouping": "shot",
      "reweight": "none",
      "kd": "subset",
    },
    "student",
  ),
  "ours": ("Ours (AGT + CB-KD, library defaults)", {}, "student"),
  "ours_focal": (
    "Ours + Focal loss (focal on the AGT heads)",
    {"loss": "focal"},
    "student",
  ),
  "ours_ride": (
    "Ours + RIDE (3 experts)",
    {"loss": "ride", "experts": 3},
    "student",
  ),
}
# Table 1's two backbone columns, and their stand-ins on the CPU presets.
BACKBONES = {
  "paper": ("resnet50", "densenet121"),
  "quick": ("resnet_small", "densenet_tiny"),
  "smoke": ("resnet_tiny", "densenet_tiny"),
}


def runs_for(methods, backbones) -> list[h.Run]:
  return [
    h.Run(
      f"{m}@{b}",
      {**METHODS[m][1], "model": b},
      METHODS[m][2],
      {"method": m, "backbone": b},
    )
    for b in backbones
    for m in methods
  ]


def run(argv=None) -> int:
  p = argparse.ArgumentParser(
    prog="python -m experiments.odir_table1", description=__doc__.split("\n")[0]
  )
  h.add_common_args(p)
  p.add_argument(
    "--methods", nargs="+", default=list(METHODS), choices=list(METHODS)
  )
  p.add_argument(
    "--backbones",
    nargs="+",
    default=None,
    help="encoders (default: the preset's Table 1 columns)",
  )
  a = p.parse_args(argv)

  from agt_jax import config as config_lib
  from agt_jax.data.registry import parse_data_spec

  workdir = a.workdir or pathlib.Path("runs/odir_table1")
  backbones = a.backbones or BACKBONES.get(a.preset, BACKBONES["paper"])
  return h.run_and_report(
    runs_for(a.methods, backbones),
    preset=a.preset,
    prog="experiments.odir_table1",
    argv=argv,
    folds=h.parse_folds(a.folds),
    workdir=workdir,
    base=lambda: {**parse_data_spec(a.data), **config_lib.parse_sets(a.set)},
    report=lambda: write_report(h.read_rows(workdir), workdir, title="Table 1"),
  )


def write_report(
  rows, workdir, *, title, table: int = 1, notes=()
) -> pathlib.Path:
  """``report.md`` of a Table 1 (ODIR) or Table 2 (RFMiD) grid, the
  paper's published numbers beside ours (``table`` picks them)."""
  workdir = pathlib.Path(workdir)
  labels = {m: v[0] for m, v in METHODS.items()}
  lines = [f"# {title}: AGT and the long-tailed baselines", ""]
  lines += h.dataset_line(rows) + list(notes)
  lines += [_paper.CAVEAT, ""]
  for b in dict.fromkeys(r["backbone"] for r in rows):
    sub = [r for r in rows if r["backbone"] == b]
    lines += [
      f"## Backbone: {b} (paper column: {_paper.family(b) or 'none'})",
      "",
    ]
    lines += h.write_table(
      sub,
      names=list(METHODS),
      labels=labels,
      key="method",
      reference=lambda m, b=b: _paper.reference(table, m, b),
    )
    png = h.bar_plot(
      sub,
      list(METHODS),
      workdir / f"table1_{b}.png",
      f"{title}, {b}: kappa, {sub[0]['dataset']}",
      labels,
      key="method",
    )
    if png:
      lines += [f"![{b}]({png.name})", ""]
  lines += h.write_per_class_md(
    workdir,
    [{**r, "method": f"{r['backbone']}/{r['method']}"} for r in rows],
    names=[
      f"{b}/{m}"
      for b in dict.fromkeys(r["backbone"] for r in rows)
      for m in METHODS
    ],
    key="method",
    title=f"{title}, per class",
  )
  lines += [
    "Multi-label adaptations (IB, EQLv2, RIDE, BAGS, multi-teacher "
    "KD) are documented in `agt_jax.losses` and docs/baselines.md.",
    "",
  ]
  return h.write_report_md(workdir, lines)


if __name__ == "__main__":
  raise SystemExit(run())
