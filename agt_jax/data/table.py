"""`ImageTable`: one dataset split as aligned numpy columns.

Every loader (ODIR-5K, RFMiD, CIFAR100-LT, odir5k-synth) returns one, so the
folds, samplers and pipelines never care where the images come from.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class ImageTable:
  """Aligned per-image columns of a dataset.

  Attributes:
    name: dataset name (e.g. ``"odir5k"``, ``"odir5k-synth"``).
    class_names: the `C` class names, in label-column order.
    image_ids: `[n]` str, unique image keys (e.g. ``"0_left"``).
    labels: `[n, C]` uint8 multi-hot targets.
    patient_ids: `[n]` str; images of one patient never cross a fold.
    paths: `[n]` object, image file paths (None for rendered datasets).
    eyes: `[n]` str, ``"left"``/``"right"`` or ``""``.
    keywords: `[n]` str, ``;``-joined diagnostic keywords or ``""``.
    splits: `[n]` str, official split (``"train"``/``"val"``/``"test"``).
    meta: free-form provenance (JSON-serialisable), e.g. ``synthetic``.
  """

  name: str
  class_names: tuple[str, ...]
  image_ids: np.ndarray
  labels: np.ndarray
  patient_ids: np.ndarray
  paths: np.ndarray | None = None
  eyes: np.ndarray | None = None
  keywords: np.ndarray | None = None
  splits: np.ndarray | None = None
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    n = len(self.image_ids)
    if self.labels.shape != (n, len(self.class_names)):
      raise ValueError(
        f"{self.name}: labels have shape {self.labels.shape}, "
        f"expected ({n}, {len(self.class_names)})."
      )
    for f in ("patient_ids", "paths", "eyes", "keywords", "splits"):
      v = getattr(self, f)
      if v is not None and len(v) != n:
        raise ValueError(f"{self.name}: `{f}` has {len(v)} rows, expected {n}.")

  def __len__(self) -> int:
    return len(self.image_ids)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def class_counts(self) -> np.ndarray:
    """`[C]` positives per class."""
    return self.labels.sum(0).astype(np.int64)

  @property
  def synthetic(self) -> bool:
    return bool(self.meta.get("synthetic", False))

  def take(self, index) -> ImageTable:
    """Rows selected by an index array or boolean mask."""
    index = np.asarray(index)
    if index.dtype == bool:
      index = np.flatnonzero(index)
    pick = lambda v: None if v is None else np.asarray(v)[index]
    return dataclasses.replace(
      self,
      image_ids=self.image_ids[index],
      labels=self.labels[index],
      patient_ids=self.patient_ids[index],
      paths=pick(self.paths),
      eyes=pick(self.eyes),
      keywords=pick(self.keywords),
      splits=pick(self.splits),
    )

  def select_classes(self, names) -> ImageTable:
    """The same images labelled with ``names`` only, in that order (an image
    may then have no positive label, as in paper 001's 3-label ODIR task).
    Raises :class:`~agt_jax.errors.InputError` naming unknown classes."""
    from agt_jax.errors import InputError

    names = tuple(names)
    unknown = [n for n in names if n not in self.class_names]
    if unknown or not names or len(set(names)) != len(names):
      raise InputError(
        f"{self.name}: cannot select classes {list(names)}"
        + (f" (unknown {unknown})" if unknown else " (empty or repeated)")
        + f"; its classes are {list(self.class_names)}."
      )
    idx = [self.class_names.index(n) for n in names]
    return dataclasses.replace(
      self,
      class_names=names,
      labels=self.labels[:, idx],
      meta={**self.meta, "selected_classes": list(names)},
    )

  def split(self, name: str) -> ImageTable:
    if self.splits is None:
      raise ValueError(f"{self.name} has no official splits.")
    return self.take(self.splits == name)

  def summary(self) -> dict[str, Any]:
    return {
      "name": self.name,
      "images": len(self),
      "patients": int(len(np.unique(self.patient_ids))),
      "class_counts": dict(zip(self.class_names, self.class_counts.tolist())),
      "synthetic": self.synthetic,
    }
