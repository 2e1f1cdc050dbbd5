"""Every notebook's code cells run top to bottom (headless matplotlib), show
their figures, and leave the values their text promises."""

import json
import pathlib

import matplotlib
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _check_walkthrough(ns):
  assert len(ns["log"]) == 9 and int(ns["state"]["step"]) == 9
  # Groups alternate step by step over the paper's three groups.
  assert [int(m["group"]) for m in ns["log"]] == [0, 1, 2] * 3
  w = np.array([m["w"] for m in ns["log"]])
  assert w.shape == (9, 8) and np.all((w >= 0) & (w <= 1))
  assert int(ns["sstate"]["step"]) == 4 and np.isfinite(float(ns["m"]["kd"]))


def _check_losses_tour(ns):
  # The paper's worked example (§3.4.3) and the KD weights the text quotes.
  np.testing.assert_allclose(ns["pos"], [-0.04, -0.15], atol=1e-6)
  np.testing.assert_allclose(ns["neg"], [0.18, 0.05], atol=1e-6)
  w = np.asarray(ns["w"])  # the batch-of-64 weights, last cell
  assert w.shape == (8,) and np.all((w > 0) & (w <= 1))
  np.testing.assert_allclose(
    np.asarray(ns["w_kd"]), [0.8, 1.0, 0.769], atol=1e-3
  )


CHECKS = {
  "agt_walkthrough.ipynb": (_check_walkthrough, 1),
  "losses_tour.ipynb": (_check_losses_tour, 2),
}


def test_every_notebook_has_checks():
  assert {p.name for p in NOTEBOOKS} == set(CHECKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, monkeypatch):
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  shown = []
  monkeypatch.setattr(
    plt, "show", lambda *a, **k: shown.append(len(plt.gcf().axes))
  )
  nb = json.loads(path.read_text())
  namespace: dict = {}
  for i, cell in enumerate(nb["cells"]):
    if cell["cell_type"] == "code":
      exec(
        compile("".join(cell["source"]), f"{path.name}[{i}]", "exec"), namespace
      )
  plt.close("all")
  check, figures = CHECKS[path.name]
  assert len(shown) == figures and all(n >= 1 for n in shown)
  check(namespace)
