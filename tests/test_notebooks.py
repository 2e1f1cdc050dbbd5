"""Every notebook's code cells run top to bottom (headless matplotlib)."""

import json
import pathlib

import matplotlib
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, monkeypatch):
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  monkeypatch.setattr(plt, "show", lambda *a, **k: None)
  nb = json.loads(path.read_text())
  namespace: dict = {}
  for i, cell in enumerate(nb["cells"]):
    if cell["cell_type"] == "code":
      exec(compile("".join(cell["source"]), f"{path.name}[{i}]", "exec"),
           namespace)
  plt.close("all")
