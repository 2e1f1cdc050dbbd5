"""Mean ± std over folds (paper tables report 5-fold CV this way)."""

from __future__ import annotations

import json
import pathlib

import numpy as np


def summarize_folds(results: list[dict], workdir) -> pathlib.Path:
  workdir = pathlib.Path(workdir)
  rows = {}
  for model in ("teacher", "student", "gbg", "transfer"):
    vals = {
      m: [r[model]["odir"][m] for r in results if model in r]
      for m in ("kappa", "f1", "auc", "final")
    }
    vals["macro_auc"] = [r[model]["macro_auc"] for r in results if model in r]
    if vals["kappa"]:
      rows[model] = {
        m: {"mean": float(np.mean(v)), "std": float(np.std(v)), "values": v}
        for m, v in vals.items()
      }
  dataset = results[0]["dataset"] if results else "?"
  summary = {
    "dataset": dataset,
    "folds": [r["fold"] for r in results],
    "synthetic": bool(results and results[0].get("synthetic")),
    "models": rows,
  }
  (workdir / "summary.json").write_text(json.dumps(summary, indent=1))
  lines = [
    f"# {dataset}: {len(results)} folds (mean ± std)",
    "",
    "| model | kappa | F1 | AUC | final | macro-AUC |",
    "|---|---|---|---|---|---|",
  ]
  for model, r in rows.items():
    lines.append(
      f"| {model} | "
      + " | ".join(
        f"{r[m]['mean']:.3f} ± {r[m]['std']:.3f}"
        for m in ("kappa", "f1", "auc", "final", "macro_auc")
      )
      + " |"
    )
  path = workdir / "summary.md"
  path.write_text("\n".join(lines) + "\n")
  return path
