"""Patient-level predictions from the two eyes (the ODIR submission format).

ODIR-5K labels a patient, not an eye: a disease is present when either eye
shows it, and the patient is normal only when both eyes are. The fusion
follows that rule on the probabilities, so that thresholding the fused
probabilities gives the fused per-eye decisions for any per-class
thresholds:

* every disease class ``c``: ``p_c = max(p_c(left), p_c(right))`` (called
  when either eye's is);
* the normal class ``N``: ``p_N = min(p_N(left), p_N(right))`` (called only
  when both eyes' are).

A patient with one readable eye takes that eye's probabilities. The
submission file has one row per patient, ``ID,N,D,G,C,A,H,M,O``, with the
fused probabilities (the official evaluation thresholds them at 0.5).
"""

from __future__ import annotations

import csv
import os
import pathlib
import re
from collections.abc import Sequence

import numpy as np

from agt_jax.errors import AgtError

NORMAL = "N"
# ODIR-5K's file names: "<patient id>_left.jpg", "<patient id>_right.jpg".
_ODIR_NAME = re.compile(r"^(?P<id>.+?)_(?P<eye>left|right)$", re.IGNORECASE)


class PatientError(AgtError, ValueError):
  """An image whose patient cannot be told; the message says how to name
  it."""


def patient_of(path, given: str | None = None) -> str:
  """The patient id of an image: ``given`` (a CSV's ``patient`` column)
  when set, else from an ODIR file name ``<id>_left|right.<ext>``."""
  if given:
    return str(given)
  m = _ODIR_NAME.match(pathlib.Path(path).stem)
  if m is None:
    raise PatientError(
      f"{path}: cannot tell its patient; name the files as ODIR does "
      "(<id>_left.jpg, <id>_right.jpg) or list the images in a CSV with a "
      "'patient' column."
    )
  return m.group("id")


def fuse(
  probs, patients: Sequence[str], class_names
) -> tuple[list, np.ndarray]:
  """``(patient ids, [P, C] fused probabilities)`` from per-image ``probs``
  `[n, C]` and each image's patient (rows of NaN, unreadable images, are
  skipped; a patient with none left is dropped). Ids are in natural order
  (numeric ids by value)."""
  probs = np.asarray(probs, np.float64)
  names = list(class_names)
  normal = names.index(NORMAL) if NORMAL in names else None
  rows: dict[str, list[int]] = {}
  for i, pid in enumerate(patients):
    if not np.isnan(probs[i]).any():
      rows.setdefault(str(pid), []).append(i)
  ids = sorted(rows, key=lambda s: (not s.isdigit(), len(s), s))
  out = np.zeros((len(ids), len(names)))
  for k, pid in enumerate(ids):
    eyes = probs[rows[pid]]
    out[k] = eyes.max(axis=0)
    if normal is not None:
      out[k, normal] = eyes[:, normal].min()
  return ids, out


def write_submission(path, ids, fused, class_names) -> None:
  """The ODIR submission CSV ``ID,<classes>``, written atomically."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  try:
    with open(tmp, "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(["ID", *class_names])
      for pid, row in zip(ids, fused):
        w.writerow([pid, *(f"{v:.6f}" for v in row)])
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()
