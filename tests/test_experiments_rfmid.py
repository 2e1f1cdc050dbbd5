"""RFMiD (experiments.rfmid): the official split on a fixture in the
published layout, and a missing folder as one clear line."""

import json

from tests import fixtures
from tests.cli import run_cli


def test_rfmid_smoke_official_split(tmp_path, cache):
  fixtures.make_rfmid(
    tmp_path / "rfmid", sizes={"train": 24, "val": 8, "test": 12}
  )
  wd = tmp_path / "rf"
  out = run_cli(
    "experiments.rfmid",
    [
      "--data",
      f"rfmid:{tmp_path / 'rfmid'}",
      "--preset",
      "smoke",
      "--methods",
      "bce",
      "ours_ride",
      "--backbones",
      "resnet_tiny",
      "--workdir",
      str(wd),
      "--protocol",
      "official",
    ],
    cache,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  report = (wd / "report.md").read_text()
  assert "Table 2 (RFMiD, official protocol)" in report
  assert "not the paper's Table 2 protocol" in report
  # the paper's Table 2 beside ours (ResNet-50 column; Eq. 16 F1 beside)
  assert "| 0.547 / 0.673 / 0.872 |" in report and "F1 (Eq. 16)" in report
  assert "Synthetic" not in report and "rfmid" in report
  folds = json.loads(
    (wd / "ours_ride@resnet_tiny" / "fold0" / "folds.json").read_text()
  )
  assert folds["mode"] == "official" and folds["num_test_images"] == 12
  res = json.loads(
    (wd / "ours_ride@resnet_tiny" / "fold0" / "results.json").read_text()
  )
  assert len(res["class_names"]) == 29


def test_rfmid_missing_data_is_a_clear_error(tmp_path, cache):
  out = run_cli(
    "experiments.rfmid",
    [
      "--data",
      f"rfmid:{tmp_path / 'none'}",
      "--preset",
      "smoke",
      "--workdir",
      str(tmp_path / "w"),
    ],
    cache,
  )
  assert out.returncode == 2
  assert "RFMiD" in out.stderr and str(tmp_path / "none") in out.stderr
