"""CIFAR100-LT forgetting (experiments.cifar_forgetting, paper Fig. 5) on
tfds mock data."""

import json

import tensorflow_datasets as tfds

from experiments import cifar_forgetting


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
