"""ODIR-5K image-level multi-label dataset (TF-free, array_record)."""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from agt_jax.data import odir
from agt_jax.data.tfds_builders import fundus_jpeg


class Builder(tfds.core.GeneratorBasedBuilder):
  """ODIR-5K training images with image-level labels from the keywords."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Image-level labels; FOV-cropped 512x512 JPEGs."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = odir.INSTRUCTIONS

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(
            shape=(None, None, 3), encoding_format="jpeg"
          ),
          "labels": tfds.features.Tensor(shape=(8,), dtype=np.uint8),
          "image_id": tfds.features.Text(),
          "patient_id": tfds.features.Text(),
          "eye": tfds.features.Text(),
          "keywords": tfds.features.Text(),
        }
      ),
      supervised_keys=("image", "labels"),
      homepage="https://odir2019.grand-challenge.org/",
    )

  def _split_generators(self, dl_manager):
    table = odir.load_odir5k(dl_manager.manual_dir)
    return {"train": self._generate_examples(table)}

  def _generate_examples(self, table):
    for i in range(len(table)):
      yield (
        str(table.image_ids[i]),
        {
          "image": fundus_jpeg(table.paths[i]),
          "labels": table.labels[i],
          "image_id": str(table.image_ids[i]),
          "patient_id": str(table.patient_ids[i]),
          "eye": str(table.eyes[i]),
          "keywords": str(table.keywords[i]),
        },
      )
