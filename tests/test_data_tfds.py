"""TF-free tfds builders: prepared from fixtures and under mock_data."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from agt_jax.data import cifar, tfds_builders
from tests import fixtures


def test_odir5k_builder_prepares_from_manual_dir(tmp_path):
  manual = fixtures.make_odir_challenge(tmp_path / "manual")
  builder = tfds_builders.prepare(
    "odir5k", manual_dir=manual, data_dir=tmp_path / "tfds"
  )
  src = builder.as_data_source("train")
  assert len(src) == 6
  rows = fixtures.label_rows()
  by_id = {}
  for i in range(len(src)):
    ex = src[i]
    image_id = (
      ex["image_id"].decode()
      if isinstance(ex["image_id"], bytes)
      else ex["image_id"]
    )
    by_id[image_id] = ex
  ex = by_id["305_left"]
  assert ex["image"].shape == (512, 512, 3)
  np.testing.assert_array_equal(ex["labels"], rows["305_left"]["labels"])
  # Same through the public reader.
  again = tfds.data_source(
    "odir5k",
    data_dir=str(tmp_path / "tfds"),
    builder_kwargs={"file_format": "array_record"},
  )
  assert len(again["train"]) == 6


def test_odir5k_builder_manual_instructions(tmp_path):
  builder = tfds_builders.builder_class("odir5k")(
    data_dir=str(tmp_path / "tfds"), file_format="array_record"
  )
  assert (
    "ODIR-5K_Training_Annotations(Updated)_V2.xlsx"
    in builder.MANUAL_DOWNLOAD_INSTRUCTIONS
  )
  with pytest.raises(Exception, match="Manual directory|no dataset found"):
    builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(
        manual_dir=str(tmp_path / "empty")
      )
    )


def test_rfmid_builder_splits(tmp_path):
  fixtures.make_rfmid(tmp_path / "manual")
  builder = tfds_builders.prepare(
    "rfmid", manual_dir=tmp_path / "manual", data_dir=tmp_path / "tfds"
  )
  sizes = {s: len(builder.as_data_source(s)) for s in ("train", "val", "test")}
  assert sizes == {"train": 6, "val": 3, "test": 3}
  assert builder.as_data_source("val")[0]["labels"].shape == (29,)


@pytest.mark.parametrize("name,num_classes", [("odir5k", 8), ("rfmid", 29)])
def test_builders_under_mock_data(tmp_path, name, num_classes):
  builder_cls = tfds_builders.builder_class(name)
  with tfds.testing.mock_data(num_examples=4, data_dir=str(tmp_path)):
    builder = builder_cls(data_dir=str(tmp_path), file_format="array_record")
    src = builder.as_data_source("train")
    assert len(src) == 4
    assert src[0]["labels"].shape == (num_classes,)


def test_cifar_from_prepared_tfds_dir_under_mock_data(tmp_path):
  (tmp_path / "cifar100").mkdir()
  with tfds.testing.mock_data(num_examples=300, data_dir=str(tmp_path)):
    data = cifar.load_cifar100_lt(tmp_path, imbalance_factor=10)
  train, src = data["train"]
  assert train.labels.shape[1] == 100 and src[0].shape == (32, 32, 3)
