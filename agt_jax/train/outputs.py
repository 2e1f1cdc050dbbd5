"""What a finished run leaves in its workdir: ``results.json``, test
predictions, plots, ``report.md`` and, last, the ``done.json`` marker.

Result files are written atomically (a temporary file renamed into place),
so a crash leaves the previous file or none, never half of one; ``done.json``
holds the run's config and is written after everything else, so its
presence means the run finished with that config.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

from agt_jax.io import atomic_write, atomic_write_text
from agt_jax.train import report as report_lib

DONE = "done.json"


def read_done(workdir) -> dict | None:
  """The finished marker (``{"config": ...}``), or None if the run in
  ``workdir`` has not finished."""
  path = pathlib.Path(workdir) / DONE
  return json.loads(path.read_text()) if path.exists() else None


def write_outputs(
  workdir: pathlib.Path, results: dict, probs: dict, y_test, test_idx
) -> None:
  (workdir / DONE).unlink(missing_ok=True)
  atomic_write_text(workdir / "results.json", json.dumps(results, indent=1))
  atomic_write(
    workdir / "test_predictions.npz",
    lambda f: np.savez_compressed(f, labels=y_test, index=test_idx, **probs),
  )
  metrics = report_lib.read_metrics(workdir / "metrics.jsonl")
  names = results["class_names"]
  title = f"{results['dataset']} fold {results['fold']}"
  report_lib.plot_curves(metrics, workdir / "curves.png", title)
  report_lib.plot_gradients(metrics, names, workdir / "gradients.png", title)
  report_lib.plot_validation(metrics, workdir / "validation.png", title)
  report_lib.plot_roc(y_test, probs, names, workdir / "roc.png", title)
  report_lib.plot_reliability(
    y_test, probs, names, workdir / "calibration.png", title
  )
  report_lib.plot_alpha(
    metrics,
    results.get("groups", {}).get("names", []),
    workdir / "alpha.png",
    title,
  )
  report_lib.write_report(workdir, results)
  atomic_write_text(
    workdir / DONE,
    json.dumps(
      {
        "config": results["config"],
        "files": ["results.json", "test_predictions.npz", "report.md"],
      },
      indent=1,
    ),
  )
