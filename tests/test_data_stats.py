"""Dataset statistics (Fig. 1) by hand, and the command on the real label
table."""

import json

import numpy as np

from agt_jax.data import stats
from agt_jax.data.table import ImageTable
from experiments import dataset_stats


def test_label_stats_by_hand():
  labels = np.array(
    [[1, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 1], [1, 1, 1], [0, 0, 0]],
    np.uint8,
  )
  t = ImageTable(
    name="toy",
    class_names=("a", "b", "c"),
    image_ids=np.array([f"{i}" for i in range(6)]),
    labels=labels,
    patient_ids=np.array(["p0", "p0", "p1", "p1", "p2", "p3"]),
  )
  s = stats.label_stats(t)
  assert s["images"] == 6 and s["patients"] == 4
  assert s["class_counts"] == {"a": 4, "b": 3, "c": 2}
  assert s["order"] == ["a", "b", "c"]
  assert s["labels_per_image"] == {"0": 1, "1": 2, "2": 2, "3": 1}
  assert s["multi_label_share"] == 3 / 6
  assert s["cooccurrence"] == [[4, 2, 1], [2, 3, 2], [1, 2, 2]]
  assert s["rho"] == 2.0


def test_command_writes_the_odir_label_statistics(tmp_path):
  assert dataset_stats.run(["--workdir", str(tmp_path)]) == 0
  s = json.loads((tmp_path / "stats.json").read_text())
  # The real ODIR-5K image-level labels: 6,997 images, 8 three-label
  # images (the paper's §5.2 counts 8 too).
  assert s["images"] == 6997 and s["labels_per_image"]["3"] == 8
  assert s["order"][:2] == ["N", "D"]
  md = (tmp_path / "stats.md").read_text()
  assert "synthetic" in md and "rho = N_max / N_min" in md
  assert (tmp_path / "fig1_odir5k-synth.png").stat().st_size > 10_000
