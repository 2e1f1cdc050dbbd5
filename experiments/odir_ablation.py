"""AGT ablations (paper Tables 3 and 4) on ODIR-5K or odir5k-synth.

Table 3: baseline (plain BCE) -> AGT + KD -> AGT + RW + KD (-> + pretraining
with ``--init``). Table 4: shot-based grouping, count-based re-weighting,
unweighted KD. Every variant is the same loop with a few config fields set.

  python -m experiments.odir_ablation --preset quick --folds 0 1 2
  python -m experiments.odir_ablation --preset smoke --folds 0 --table 3

Finished runs (a ``results.json`` in their workdir) are skipped on re-launch;
all results are appended to ``results.jsonl`` and rendered to ``report.md``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

# variant -> (table, config overrides, which model's score the table reports)
VARIANTS = {
    "baseline": (3, {"grouping": "single", "reweight": "none",
                     "student": False}, "teacher"),
    "agt_kd": (3, {"reweight": "none"}, "student"),
    "agt_rw_kd": (3, {}, "student"),
    "shot_grouping": (4, {"grouping": "shot"}, "student"),
    "count_rw": (4, {"reweight": "count"}, "student"),
    "unweighted_kd": (4, {"kd": "plain"}, "student"),
}


def run(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m experiments.odir_ablation",
                              description=__doc__.split("\n")[0])
  p.add_argument("--preset", default="quick")
  p.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2])
  p.add_argument("--table", type=int, choices=[3, 4], nargs="+",
                 default=[3, 4])
  p.add_argument("--data", default="odir5k-synth")
  p.add_argument("--init", default=None)
  p.add_argument("--workdir", type=pathlib.Path,
                 default=pathlib.Path("runs/odir_ablation"))
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
  a = p.parse_args(argv)

  from agt_jax import config as config_lib
  from agt_jax.train import train_and_evaluate
  from experiments.odir import _data_overrides

  base = {**_data_overrides(a.data), **config_lib.parse_sets(a.set)}
  variants = {k: v for k, v in VARIANTS.items() if v[0] in a.table}
  if a.init and 3 in a.table:
    variants["agt_rw_kd_pretrained"] = (3, {"init": a.init}, "student")
  a.workdir.mkdir(parents=True, exist_ok=True)
  log = a.workdir / "results.jsonl"
  rows = []
  for name, (table, overrides, model) in variants.items():
    for fold in a.folds:
      wd = a.workdir / name / f"fold{fold}"
      if (wd / "results.json").exists():
        print(f"skip {name} fold {fold}: finished", flush=True)
        r = json.loads((wd / "results.json").read_text())
      else:
        cfg = config_lib.get_config(a.preset, **base, **overrides, fold=fold)
        try:
          r = train_and_evaluate(cfg, wd, resume=(wd / "config.json").exists())
        except (FileNotFoundError, ValueError, FloatingPointError) as e:
          print(f"error: {name} fold {fold}: {e}", file=sys.stderr)
          return 2
      row = {"variant": name, "table": table, "fold": fold, "model": model,
             "dataset": r["dataset"], "synthetic": r["synthetic"],
             "preset": a.preset, **r[model]["odir"],
             "macro_auc": r[model]["macro_auc"]}
      rows.append(row)
      with open(log, "a") as f:
        f.write(json.dumps(row) + "\n")
  path = write_report(rows, a.workdir)
  print(f"report: {path}")
  return 0


def write_report(rows, workdir) -> pathlib.Path:
  dataset = rows[0]["dataset"] if rows else "?"
  folds = sorted({r["fold"] for r in rows})
  lines = [f"# AGT ablations on {dataset}: {len(folds)} fold(s) {folds}, "
           "mean ± std", ""]
  if rows and rows[0]["synthetic"]:
    lines += ["**Synthetic data** (real ODIR-5K labels, rendered images).", ""]
  for table in (3, 4):
    sub = [r for r in rows if r["table"] == table]
    if not sub:
      continue
    lines += [f"## Table {table}", "",
              "| variant | model | kappa | F1 | AUC | macro-AUC |",
              "|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["variant"] for r in sub):
      vs = [r for r in sub if r["variant"] == name]
      cells = []
      for m in ("kappa", "f1", "auc", "macro_auc"):
        v = np.array([r[m] for r in vs])
        cells.append(f"{v.mean():.3f} ± {v.std():.3f}")
      lines.append(f"| {name} | {vs[0]['model']} | " + " | ".join(cells) + " |")
    lines.append("")
  path = pathlib.Path(workdir) / "report.md"
  path.write_text("\n".join(lines))
  return path


if __name__ == "__main__":
  raise SystemExit(run())
