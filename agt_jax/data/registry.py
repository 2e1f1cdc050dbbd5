"""Datasets by name: every experiment picks its data with one string."""

from __future__ import annotations

import hashlib
import pathlib

import numpy as np

from agt_jax import io
from agt_jax.data import cifar, external, images, odir, rfmid, synth, verify
from agt_jax.data.table import ImageTable
from agt_jax.errors import ConfigError

# Rendered here, no folder needed (every output made from them says
# "synthetic").
OFFLINE = ("odir5k-synth", "odir5k-synth-pretrain", "fgadr-synth")
# Lesion masks and DR grades (agt_jax.data.fgadr): the multi-task
# pretraining of experiments.pretrain --task fgadr reads them, no
# classifier does.
SEGMENTATION = ("fgadr", "fgadr-synth")
NAMES = (
  "odir5k-synth",
  "odir5k-synth-pretrain",
  "fgadr-synth",
  "fgadr",
  "odir5k",
  "rfmid",
  "aptos2019",
  "isic2018",
  "airogs",
  "cifar100-lt-100",
  "cifar100-lt-50",
  "cifar100-lt-10",
)
# One label per image: softmax cross-entropy under objective=auto.
SINGLE_LABEL = (
  "cifar100-lt-100",
  "cifar100-lt-50",
  "cifar100-lt-10",
  "aptos2019",
  "isic2018",
  "airogs",
)
# ``--data`` names that are not dataset names.
ALIASES = {"odir5k-kaggle": "odir5k", "cifar100": "cifar100-lt-100"}
DATA_FLAG_HELP = (
  "odir5k-synth (offline default), or NAME:PATH for data in "
  "a local folder: odir5k:PATH, rfmid:PATH, cifar100:PATH, "
  "aptos2019:PATH, isic2018:PATH, airogs:PATH (pretraining: "
  "fgadr-synth or fgadr:PATH)"
)


def parse_data_spec(spec: str) -> dict:
  """``--data`` (the one data flag of every entry point) -> config
  overrides ``{"dataset", "data_dir"}``.

  ``odir5k-synth`` needs no path; every other dataset is ``NAME:PATH``
  (``odir5k``, ``rfmid``, ``cifar100`` or a ``cifar100-lt-<IF>`` name).
  """
  name, sep, path = spec.partition(":")
  dataset = ALIASES.get(name, name)
  if dataset in OFFLINE and not sep:
    return {"dataset": dataset, "data_dir": None}
  if dataset in NAMES and dataset not in OFFLINE and path:
    return {"dataset": dataset, "data_dir": path}
  raise ConfigError(f"--data: expected {DATA_FLAG_HELP}; got {spec!r}.")


def load_dataset(
  name: str,
  *,
  data_dir=None,
  cache_dir=None,
  image_size: int = 512,
  seed: int = 0,
  ignorable_policy: str = "as_normal",
  workers=None,
  progress: bool = True,
  max_images: int | None = None,
  skip_bad_images: bool = False,
):
  """``(table, image_source)`` for a dataset name.

  * ``odir5k-synth`` (the offline default): rendered into ``cache_dir`` once;
  * ``odir5k`` / ``rfmid``: real data under ``data_dir``;
  * ``cifar100-lt-{100,50,10}``: CIFAR100-LT's long-tailed training split
    followed by the balanced test split, told apart by ``table.splits``
    (train with ``fold_mode="official"``); ``meta["shots"]`` holds the
    head/medium/tail classes.

  ``max_images`` keeps the first N images (rows are ordered by patient, so
  patients stay whole up to one boundary); for odir5k-synth only those are
  rendered.

  Real image datasets have every file checked first
  (:mod:`agt_jax.data.verify`, cached in ``cache_dir``): bad files raise
  :class:`~agt_jax.data.errors.BadImagesError` naming them, or with
  ``skip_bad_images`` are dropped and listed in
  ``table.meta["skipped_images"]``.
  """
  if name in SEGMENTATION:
    raise ConfigError(
      f"dataset {name!r} holds lesion masks and DR grades for the "
      "multi-task pretraining: python -m experiments.pretrain --task fgadr "
      f"--data {name}{'' if name in OFFLINE else ':PATH'}; its checkpoint "
      "is an --init for the classifiers."
    )
  if name == "odir5k-synth-pretrain":
    return synth.load_pretrain(
      cache_dir,
      size=image_size,
      seed=seed,
      workers=workers,
      progress=progress,
      max_images=max_images,
    )
  if name == "odir5k-synth":
    return synth.load_synth(
      cache_dir,
      size=image_size,
      seed=seed,
      ignorable_policy=ignorable_policy,
      workers=workers,
      progress=progress,
      max_images=max_images,
    )
  table, source = _load_real(
    name,
    data_dir=data_dir,
    image_size=image_size,
    seed=seed,
    ignorable_policy=ignorable_policy,
  )
  if table.paths is not None:
    root = str(pathlib.Path(data_dir).expanduser().absolute())
    cache = (
      pathlib.Path(cache_dir or io.cache_dir()).expanduser()
      / "image_checks"
      / f"{name}-{hashlib.sha1(root.encode()).hexdigest()[:12]}.json"
    )
    table = verify.verified(
      table, name, skip_bad=skip_bad_images, cache_file=cache, progress=progress
    )
    source = images.FileImageSource(tuple(table.paths), size=image_size)
  if max_images:
    keep = np.arange(min(max_images, len(table)))
    table, source = table.take(keep), images.SubsetSource(source, keep)
  return table, source


def load_labels(name: str, *, data_dir=None, seed: int = 0) -> ImageTable:
  """The label table of a dataset alone: no image is rendered, decoded or
  checked (dataset statistics, Fig. 1)."""
  if name == "odir5k-synth":
    return synth.synth_table()
  if name == "odir5k-synth-pretrain":
    return synth.pretrain_table(seed=seed)
  return _load_real(
    name,
    data_dir=data_dir,
    image_size=32,
    seed=seed,
    ignorable_policy="as_normal",
  )[0]


def _load_real(name, *, data_dir, image_size, seed, ignorable_policy):
  if (name in ("odir5k", "rfmid") or name in external.LOADERS) and (
    data_dir is None
  ):
    raise ConfigError(
      f"dataset {name!r} is read from a local folder: pass "
      f"--data {name}:PATH (data_dir= in Python); the offline "
      "default is 'odir5k-synth'."
    )
  if name == "odir5k":
    t = odir.load_odir5k(data_dir, ignorable_policy=ignorable_policy)
    return t, images.FileImageSource(tuple(t.paths), size=image_size)
  if name == "rfmid":
    t = rfmid.load_rfmid(data_dir)
    return t, images.FileImageSource(tuple(t.paths), size=image_size)
  if name in external.LOADERS:
    t = external.LOADERS[name](data_dir)
    return t, images.FileImageSource(tuple(t.paths), size=image_size)
  if name.startswith("cifar100-lt-"):
    factor = int(name.rsplit("-", 1)[1])
    if data_dir is None:
      raise ConfigError(
        f"dataset {name!r} is read from a local folder: "
        "pass --data cifar100:PATH (a folder with "
        "cifar-100-python.tar.gz or a prepared tfds "
        "cifar100)."
      )
    parts = cifar.load_cifar100_lt(
      pathlib.Path(data_dir), imbalance_factor=factor, seed=seed
    )
    (tr, xtr), (te, xte) = parts["train"], parts["test"]
    table = ImageTable(
      name=tr.name,
      class_names=tr.class_names,
      image_ids=np.concatenate([tr.image_ids, te.image_ids]),
      labels=np.concatenate([tr.labels, te.labels]),
      patient_ids=np.concatenate([tr.patient_ids, te.patient_ids]),
      splits=np.concatenate([tr.splits, te.splits]),
      meta=tr.meta,
    )
    return table, images.ArrayImageSource(
      np.concatenate([xtr.array, xte.array])
    )
  raise ConfigError(f"unknown dataset {name!r}; known: {', '.join(NAMES)}.")
