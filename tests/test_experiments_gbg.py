"""GBG + MGDA (experiments.gbg, paper 004): the grid on odir5k-synth and on
single-label tfds mock CIFAR, and the group-loss reading's names."""

import json

import tensorflow_datasets as tfds

from tests.cli import rows, run_cli


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
