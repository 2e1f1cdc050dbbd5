"""What a finished run leaves in its workdir: ``results.json``, test
predictions, plots and ``report.md``."""

from __future__ import annotations

import json
import pathlib

import numpy as np

from agt_jax.train import report as report_lib


def write_outputs(workdir: pathlib.Path, results: dict, probs: dict,
                  y_test, test_idx) -> None:
  (workdir / "results.json").write_text(json.dumps(results, indent=1))
  np.savez_compressed(workdir / "test_predictions.npz", labels=y_test,
                      index=test_idx, **probs)
  metrics = report_lib.read_metrics(workdir / "metrics.jsonl")
  names = results["class_names"]
  title = f"{results['dataset']} fold {results['fold']}"
  report_lib.plot_curves(metrics, workdir / "curves.png", title)
  report_lib.plot_gradients(metrics, names, workdir / "gradients.png", title)
  report_lib.plot_validation(metrics, workdir / "validation.png", title)
  report_lib.plot_roc(y_test, probs, names, workdir / "roc.png", title)
  report_lib.write_report(workdir, results)
