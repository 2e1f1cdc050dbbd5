"""Paper Table 1 (experiments.odir_table1): every method end to end on
tiny data, the report beside the paper's column, and finished runs skipped."""

import json

from experiments import odir_table1
from tests.cli import rows, run_cli


def test_table1_smoke_every_method_then_skips(tmp_path, cache):
  wd = tmp_path / "t1"
  args = [
    "--preset",
    "smoke",
    "--folds",
    "0",
    "--backbones",
    "resnet_tiny",
    "--workdir",
    str(wd),
  ]
  out = run_cli("experiments.odir_table1", args, cache)
  assert out.returncode == 0, out.stderr[-3000:]
  got = rows(wd)
  assert [r["method"] for r in got] == list(odir_table1.METHODS)
  report = (wd / "report.md").read_text()
  assert "Synthetic data" in report and "1 fold(s)" in report
  for label, _, _ in odir_table1.METHODS.values():
    assert f"| {label} |" in report, label
  # The paper's Table 1 (ResNet-50 column) beside ours, marked as the
  # paper's; Eq. 16 F1 beside the script's.
  assert "paper: kappa / F1 / AUC" in report and "not comparable" in report
  assert "paper column: ResNet-50" in report
  line = lambda m: next(
    l for l in report.splitlines() if l.startswith(f"| {m} |")
  )
  assert line("Class-balanced sampling").endswith("| 0.601 / 0.886 / 0.920 |")
  assert line("Influence-balanced (multi-label)").endswith("| – |")
  assert "F1 (Eq. 16)" in report and all("f1_eq16" in r for r in got)
  by = {r["method"]: r for r in got}
  assert 0 <= by["cb_sampling"]["f1_eq16"] <= 1
  assert (wd / "table1_resnet_tiny.png").stat().st_size > 1000
  cfg = lambda m: json.loads(
    (wd / f"{m}@resnet_tiny" / "fold0" / "config.json").read_text()
  )
  assert cfg("eqlv2")["loss"] == "eqlv2" and cfg("ride")["experts"] == 3
  assert cfg("multi_teacher_kd")["teacher"] == "multi"
  assert cfg("cb_sampling")["teacher_sampler"] == "class_balanced"
  assert cfg("ours_focal")["loss"] == "focal" and cfg("ours_focal")["student"]
  # EQLv2 carried its statistics through the run (in the checkpoint).
  assert (
    wd / "eqlv2@resnet_tiny" / "fold0" / "checkpoints" / "teacher"
  ).exists()
  again = run_cli(
    "experiments.odir_table1", args + ["--methods", "bce", "ours"], cache
  )
  assert again.returncode == 0, again.stderr[-2000:]
  assert again.stdout.count("finished, skipped") == 2
  assert rows(wd) == got  # a skipped run's row is not appended again


def test_table1_densenet_column(tmp_path, cache):
  wd = tmp_path / "t1d"
  out = run_cli(
    "experiments.odir_table1",
    [
      "--preset",
      "smoke",
      "--folds",
      "0",
      "--methods",
      "ours",
      "--backbones",
      "densenet_tiny",
      "--workdir",
      str(wd),
    ],
    cache,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert "## Backbone: densenet_tiny" in (wd / "report.md").read_text()
