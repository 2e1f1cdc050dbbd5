"""Paper Table 3 (experiments.odir_ablation): the ablation rows, the paper's
ordering verdict both ways, and finished runs skipped."""

import json

from tests.cli import rows, run_cli


def test_ablation_smoke_runs_table3_and_skips_finished(tmp_path, cache):
  wd = tmp_path / "abl"
  args = [
    "--preset",
    "smoke",
    "--folds",
    "0",
    "--table",
    "3",
    "--workdir",
    str(wd),
    "--variants",
    "baseline",
    "agt_kd",
    "agt_frw_kd",
  ]
  out = run_cli("experiments.odir_ablation", args, cache)
  assert out.returncode == 0, out.stderr[-2000:]
  report = (wd / "report.md").read_text()
  assert "Synthetic data" in report and "## Table 3" in report
  for label in (
    "baseline (plain BCE)",
    "AGT + KD",
    "AGT + stable RW (feedback) + KD",
  ):
    assert f"| {label} |" in report
  assert "Validation (what defaults are chosen on)" in report
  assert "| AGT + KD | " in report.split("Paired per-fold")[1]
  # The paper's Table 3 beside ours.
  assert next(
    l for l in report.splitlines() if l.startswith("| AGT + KD | ")
  ).endswith("| 0.645 / 0.913 / 0.933 |")
  assert [r["run"] for r in rows(wd)] == ["baseline", "agt_kd", "agt_frw_kd"]
  kappa = {r["run"]: r["kappa"] for r in rows(wd)}
  holds = kappa["baseline"] < kappa["agt_kd"] < kappa["agt_frw_kd"]
  assert "## Paper ordering" in report
  assert (
    f"AGT + stable RW (feedback) + KD {kappa['agt_frw_kd']:.3f}. The "
    "paper's ordering baseline < AGT + KD < AGT + RW + KD "
    + ("**holds**" if holds else "**does not hold**")
  ) in report
  assert all("val_final" in r for r in rows(wd))
  cfg = json.loads((wd / "agt_frw_kd" / "fold0" / "config.json").read_text())
  assert cfg["reweight"] == "feedback" and cfg["kd"] == "cb"
  cfg = json.loads((wd / "baseline" / "fold0" / "config.json").read_text())
  assert cfg["grouping"] == "single" and cfg["student"] is False
  again = run_cli("experiments.odir_ablation", args, cache)
  assert again.returncode == 0
  assert again.stdout.count("finished, skipped") == 3


def test_ablation_ordering_verdict_both_ways():
  from experiments import odir_ablation

  row = lambda run, k: {"run": run, "kappa": k}
  up = odir_ablation._ordering(
    [row("baseline", 0.1), row("agt_kd", 0.2), row("agt_frw_kd", 0.3)]
  )
  down = odir_ablation._ordering(
    [row("baseline", 0.3), row("agt_kd", 0.2), row("agt_frw_kd", 0.1)]
  )
  assert len(up) == len(down) == 4
  assert up[2].endswith("**holds** here.")
  assert down[2].endswith("**does not hold** here.")
  assert "baseline 0.100, AGT + KD 0.200" in up[2]
