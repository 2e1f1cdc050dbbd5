"""Every reproduction experiment end to end on tiny data (smoke preset):
outputs, resumability (finished runs skipped), and what the tables say."""

import json
import sys

import pytest
import tensorflow_datasets as tfds

from experiments import _harness as h
from experiments import cifar_forgetting, odir_table1
from tests import fixtures, processes
from tests.test_experiments_odir import ROOT, env


def run_cli(module, args, cache):
  return processes.run(
    [sys.executable, "-m", module, *args],
    cwd=ROOT,
    env=env(cache),
    watch=processes.metrics_of(args),
  )


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return tmp_path_factory.mktemp("synth-cache")


def rows(workdir):
  return [
    json.loads(l) for l in (workdir / "results.jsonl").read_text().splitlines()
  ]


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


def test_cifar_forgetting_smoke_on_tfds_mock_data(tmp_path):
  (tmp_path / "cifar100").mkdir()
  wd = tmp_path / "c5"
  with tfds.testing.mock_data(num_examples=400, data_dir=str(tmp_path)):
    code = cifar_forgetting.run(
      [
        "--data",
        f"cifar100:{tmp_path}",
        "--preset",
        "smoke",
        "--workdir",
        str(wd),
      ]
    )
  assert code == 0
  report = (wd / "report.md").read_text()
  assert "cifar100-lt-100" in report and "Synthetic" not in report
  assert "| no_others |" in report and "| with_others |" in report
  assert (wd / "fig5.png").stat().st_size > 1000
  curves = cifar_forgetting.tier_curves(wd / "with_others" / "fold0")
  assert curves["step"] == list(range(1, 13))  # 12 steps, eval every 1
  assert all(0.0 <= a <= 1.0 for a in curves["all"])
  cfg = json.loads((wd / "no_others" / "fold0" / "config.json").read_text())
  assert cfg["alpha"] == 0.0 and cfg["shot_many"] == 100


def test_gradient_dynamics_smoke(tmp_path, cache):
  wd = tmp_path / "g6"
  out = run_cli(
    "experiments.gradient_dynamics",
    ["--preset", "smoke", "--workdir", str(wd)],
    cache,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  report = (wd / "report.md").read_text()
  assert "| no_rw |" in report and "| rw |" in report
  assert "Synthetic data" in report
  assert (wd / "fig6.png").stat().st_size > 1000
  from experiments import gradient_dynamics

  d = gradient_dynamics.tail_dynamics(wd / "rw" / "fold0")
  assert len(d["pos"]) == 6 and len(d["tail_map"]) == 3


def test_sweeps_smoke(tmp_path, cache):
  wd = tmp_path / "s7"
  out = run_cli(
    "experiments.sweeps",
    [
      "--preset",
      "smoke",
      "--folds",
      "0",
      "--alphas",
      "0",
      "0.5",
      "--temperatures",
      "5",
      "--workdir",
      str(wd),
    ],
    cache,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  report = (wd / "report.md").read_text()
  assert "## alpha sweep" in report and "## T sweep" in report
  assert "Best mean kappa at alpha" in report
  assert (wd / "fig7.png").stat().st_size > 1000
  assert {r["run"] for r in rows(wd)} == {"alpha_0", "alpha_0.5", "T_5"}


def test_harness_read_rows_keeps_last_line_per_run(tmp_path):
  for k in (0.1, 0.2):
    h.append_row(
      tmp_path, {"run": "a", "fold": 0, "preset": "smoke", "kappa": k}
    )
  h.append_row(
    tmp_path, {"run": "a", "fold": 1, "preset": "smoke", "kappa": 0.3}
  )
  got = sorted(h.read_rows(tmp_path), key=lambda r: r["fold"])
  assert [r["kappa"] for r in got] == [0.2, 0.3]
  assert h.mean_std([0.2, 0.3]) == "0.250 ± 0.050"
  assert h.parse_folds(["all"]) == [0, 1, 2, 3, 4]


def test_gbg_smoke_under_a_minute_then_skips(tmp_path, cache):
  import time

  wd = tmp_path / "gbg"
  args = ["--preset", "smoke", "--folds", "0", "--workdir", str(wd)]
  t0 = time.perf_counter()
  out = run_cli("experiments.gbg", args, cache)
  seconds = time.perf_counter() - t0
  assert out.returncode == 0, out.stderr[-3000:]
  got = rows(wd)
  assert [r["variant"] for r in got] == [
    "gradient+mgda",
    "random+mgda",
    "single+per_class",
    "bce",
    "agt",
  ]
  assert [r["model"] for r in got] == ["gbg"] * 3 + ["teacher", "student"]
  report = (wd / "report.md").read_text()
  assert "synthetic" in report.lower()
  for label in (
    "GBG + MGDA (paper)",
    "random groups + MGDA",
    "MGDA per class, no groups",
    "plain BCE",
    "AGT (teacher + student)",
  ):
    assert f"| {label} |" in report, label
  assert (wd / "alpha.png").stat().st_size > 1000
  # MGDA's weights are logged every step, on the simplex.
  metrics = [
    json.loads(l)
    for l in (wd / "gradient+mgda" / "fold0" / "metrics.jsonl")
    .read_text()
    .splitlines()
  ]
  alphas = [m["alpha"] for m in metrics if m.get("phase") == "gbg"]
  assert alphas and all(abs(sum(a) - 1) < 1e-5 and len(a) == 4 for a in alphas)
  groups = json.loads(
    (wd / "gradient+mgda" / "fold0" / "groups.json").read_text()
  )
  assert groups["strategy"] == "gradient" and len(groups["groups"]) == 4
  print(f"experiments.gbg --preset smoke: {seconds:.1f} s")
  again = run_cli("experiments.gbg", args, cache)
  assert again.returncode == 0 and again.stdout.count("finished, skipped") == 5


def test_gbg_single_label_on_tfds_mock_cifar(tmp_path):
  from experiments import gbg

  (tmp_path / "cifar100").mkdir()
  wd = tmp_path / "gbg-cifar"
  # 20 images a class, imbalance 10: every class keeps at least 2.
  with tfds.testing.mock_data(num_examples=2000, data_dir=str(tmp_path)):
    code = gbg.run(
      [
        "--data",
        f"cifar100:{tmp_path}",
        "--preset",
        "smoke",
        "--imbalance",
        "10",
        "--grouping",
        "count",
        "--moo",
        "mgda",
        "--groups",
        "2",
        "--workdir",
        str(wd),
      ]
    )
  assert code == 0
  (row,) = rows(wd)
  assert row["variant"] == "count+mgda"
  assert row["dataset"] == "cifar100-lt-10" and not row["synthetic"]
  assert 0.0 <= row["top1_all"] <= 1.0
  res = json.loads((wd / "count+mgda" / "fold0" / "results.json").read_text())
  assert res["config"]["model"] == "resnet8_cifar"
  assert res["config"]["objective"] == "auto"
  assert set(res["gbg"]["top1"]) == {"all", "many", "medium", "few"}
  report = (wd / "report.md").read_text()
  assert "## Top-1 accuracy (balanced test split)" in report
  assert "| count groups + MGDA |" in report


def test_gbg_grid_names_the_group_loss_reading():
  from experiments import gbg

  names = gbg.variants(["gradient"], ["mgda", "per_class"], ["mean", "sum"])
  assert names == ["gradient+mgda", "gradient+mgda+sum", "single+per_class"]
  runs = gbg.make_runs(names, seeds=[0], n_groups=4, baselines=False)
  assert [r.overrides["gbg_group_loss"] for r in runs] == [
    "mean",
    "sum",
    "mean",
  ]
  assert all(n in gbg.LABELS for n in names)
  # Every run of the quick grid is a valid config: the AGT baseline's
  # student steps are set on it alone (a GBG run refuses an AGT field).
  from agt_jax import config as config_lib

  for r in gbg.make_runs(
    ["gradient+mgda"], seeds=[0], n_groups=4, baselines=True, preset="quick"
  ):
    c = config_lib.get_config(
      "quick", **{**gbg.PRESETS["quick"], **r.overrides}
    )
    config_lib.validate(c)
    if r.name == "agt":
      assert c.student_steps == 300
