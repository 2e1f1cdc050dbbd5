"""RFMiD, 29 classes, official train/val/test splits (TF-free, array_record)."""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from agt_jax.data import rfmid
from agt_jax.data.tfds_builders import fundus_jpeg


class Builder(tfds.core.GeneratorBasedBuilder):
  """RFMiD with NORMAL + 27 conditions + OTHER; FOV-cropped 512x512 JPEGs."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "29-class labels, official splits."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = rfmid.INSTRUCTIONS

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(
            shape=(None, None, 3), encoding_format="jpeg"
          ),
          "labels": tfds.features.Tensor(
            shape=(len(rfmid.CLASSES_29),), dtype=np.uint8
          ),
          "image_id": tfds.features.Text(),
        }
      ),
      supervised_keys=("image", "labels"),
      homepage="https://riadd.grand-challenge.org/",
    )

  def _split_generators(self, dl_manager):
    table = rfmid.load_rfmid(dl_manager.manual_dir)
    return {
      s: self._generate_examples(table.split(s))
      for s in ("train", "val", "test")
    }

  def _generate_examples(self, table):
    for i in range(len(table)):
      yield (
        str(table.image_ids[i]),
        {
          "image": fundus_jpeg(table.paths[i]),
          "labels": table.labels[i],
          "image_id": str(table.image_ids[i]),
        },
      )
