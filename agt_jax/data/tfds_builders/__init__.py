"""TF-free manual-download tfds builders (array_record): ``odir5k``, ``rfmid``.

Prepare once, then read with ``tfds.data_source(name, data_dir=...)``::

  from agt_jax.data.tfds_builders import prepare
  prepare("odir5k", manual_dir="/data/odir5k", data_dir="~/tensorflow_datasets")
"""

from __future__ import annotations

import io
import pathlib


def builder_class(name: str):
  if name == "odir5k":
    from agt_jax.data.tfds_builders.odir5k.odir5k_dataset_builder import Builder
  elif name == "rfmid":
    from agt_jax.data.tfds_builders.rfmid.rfmid_dataset_builder import Builder
  else:
    raise ValueError(f"unknown builder {name!r}; known: odir5k, rfmid.")
  return Builder


def prepare(name: str, *, manual_dir, data_dir):
  """Builds the array_record files of ``name`` from ``manual_dir``."""
  import tensorflow_datasets as tfds

  builder = builder_class(name)(
    data_dir=str(pathlib.Path(data_dir).expanduser()),
    file_format="array_record",
  )
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(
      manual_dir=str(pathlib.Path(manual_dir).expanduser())
    )
  )
  return builder


def fundus_jpeg(path, size: int = 512) -> bytes:
  """A fundus file, FOV-cropped and resized to ``size``, as JPEG bytes (what
  both builders store)."""
  from PIL import Image

  from agt_jax.data import images

  buf = io.BytesIO()
  Image.fromarray(images.prepare_fundus(path, size=size)).save(
    buf, format="JPEG", quality=95
  )
  return buf.getvalue()
