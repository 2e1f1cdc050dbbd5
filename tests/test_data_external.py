"""APTOS 2019, ISIC 2018 Task 3 and AIROGS: their published layouts read
into one-hot tables, through the registry end to end, and every bad input
refused with its file, row and column."""

import numpy as np
import pytest

from agt_jax import methods
from agt_jax.config import Config
from agt_jax.data import errors, external, registry
from tests import fixtures


def test_aptos_grades_are_one_hot_with_their_images(tmp_path):
  ids = fixtures.make_aptos(tmp_path / "aptos")
  t = external.load_aptos(tmp_path / "aptos")
  assert t.name == "aptos2019" and t.class_names == external.APTOS_CLASSES
  assert list(t.image_ids) == ids
  np.testing.assert_array_equal(t.labels.argmax(1), [0, 2, 4, 1, 0, 3])
  assert (t.labels.sum(1) == 1).all()
  assert all(p.endswith(f"train_images/{k}.png") for p, k in zip(t.paths, ids))
  assert list(t.patient_ids) == ids  # one "patient" per image


def test_isic_and_airogs_layouts(tmp_path):
  fixtures.make_isic2018(tmp_path / "isic")
  t = external.load_isic2018(tmp_path / "isic")
  assert t.class_names == ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
  np.testing.assert_array_equal(t.labels.argmax(1), [0, 1, 1, 6, 2])
  ids = fixtures.make_airogs(tmp_path / "airogs")
  t = external.load_airogs(tmp_path / "airogs")
  np.testing.assert_array_equal(t.labels, [[1, 0], [0, 1], [1, 0], [1, 0]])
  # images found in the numbered part folders
  assert [p.rsplit("/", 2)[-2:] for p in t.paths] == [
    [str(i % 2), f"{k}.jpg"] for i, k in enumerate(ids)
  ]


def test_through_the_registry_with_softmax_and_image_checks(tmp_path):
  fixtures.make_airogs(tmp_path / "airogs")
  spec = registry.parse_data_spec(f"airogs:{tmp_path / 'airogs'}")
  assert spec == {"dataset": "airogs", "data_dir": str(tmp_path / "airogs")}
  table, source = registry.load_dataset(
    "airogs", data_dir=spec["data_dir"], cache_dir=tmp_path / "c", image_size=32
  )
  assert len(table) == 4 and source[0].shape == (32, 32, 3)
  assert methods.objective(Config(dataset="airogs")) == "softmax"
  assert methods.objective(Config(dataset="rfmid")) == "bce"
  # A referenced image that is missing is named by the image check.
  (tmp_path / "airogs" / "1" / "TRAIN000001.jpg").unlink()
  with pytest.raises(errors.BadImagesError, match="TRAIN000001"):
    registry.load_dataset(
      "airogs", data_dir=spec["data_dir"], cache_dir=tmp_path / "d"
    )
  with pytest.raises(Exception, match="aptos2019:PATH"):
    registry.load_dataset("aptos2019")


def test_bad_label_files_name_file_row_and_column(tmp_path):
  with pytest.raises(errors.DatasetNotFoundError, match="train.csv"):
    external.load_aptos(tmp_path / "nothing")
  fixtures.make_aptos(tmp_path / "a")
  csv_path = tmp_path / "a" / "train.csv"
  lines = csv_path.read_text().splitlines()
  csv_path.write_text("\n".join(lines[:3] + [lines[3].split(",")[0] + ",7"]))
  with pytest.raises(
    errors.LabelFileError, match=r"row 4, column 'diagnosis' is '7'"
  ):
    external.load_aptos(tmp_path / "a")
  csv_path.write_text("id,grade\nx,1\n")
  with pytest.raises(
    errors.LabelFileError,
    match=r"missing column\(s\) \['id_code', 'diagnosis'\]",
  ):
    external.load_aptos(tmp_path / "a")
  fixtures.make_isic2018(tmp_path / "i")
  gt = tmp_path / "i" / "ISIC2018_Task3_Training_GroundTruth.csv"
  rows = gt.read_text().splitlines()
  rows[2] = rows[2].replace("0.0", "1.0", 1)  # two diagnoses on row 3
  gt.write_text("\n".join(rows))
  with pytest.raises(errors.LabelFileError, match="row 3 has 2 diagnoses"):
    external.load_isic2018(tmp_path / "i")
  rows[2] = rows[2].replace("1.0", "yes", 1)
  gt.write_text("\n".join(rows))
  with pytest.raises(
    errors.LabelFileError, match=r"row 3, column 'MEL' is 'yes'"
  ):
    external.load_isic2018(tmp_path / "i")
  fixtures.make_airogs(tmp_path / "g")
  labels = tmp_path / "g" / "train_labels.csv"
  labels.write_text("challenge_id,class\nTRAIN000000,maybe\n")
  with pytest.raises(
    errors.LabelFileError, match=r"row 2, column 'class' is 'maybe'"
  ):
    external.load_airogs(tmp_path / "g")


def test_balanced_test_split_and_shot_tiers():
  counts = [600, 120, 300, 40, 90]  # APTOS-like imbalance
  labels = np.repeat(np.eye(5, dtype=np.uint8), counts, axis=0)
  splits = external.balanced_test_split(labels, seed=3)
  test = labels[splits == "test"].sum(0)
  # round(0.2 * 1150) // 5 = 46 per class, at most half a class (40 -> 20)
  np.testing.assert_array_equal(test, [46, 46, 46, 20, 45])
  assert (splits == "test").sum() + (splits == "train").sum() == len(labels)
  again = external.balanced_test_split(labels, seed=3)
  np.testing.assert_array_equal(splits, again)  # seeded
  train = labels[splits == "train"].sum(0)
  tiers = external.shot_tiers(train)
  assert tiers == {"head": [0, 2], "medium": [1, 4], "tail": [3]}
