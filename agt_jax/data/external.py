"""The companions' single-label datasets, read from their published layouts.

* **APTOS 2019** (paper 002; Kaggle "APTOS 2019 Blindness Detection"):
  ``train.csv`` with ``id_code,diagnosis`` (DR grade 0-4) and the images
  ``train_images/<id_code>.png``. Classes ``grade0`` ... ``grade4``.
* **ISIC 2018 Task 3** (paper 002): the ground-truth CSV
  ``ISIC2018_Task3_Training_GroundTruth.csv`` with ``image`` and one-hot
  columns ``MEL,NV,BCC,AKIEC,BKL,DF,VASC`` (exactly one 1 per row; the
  official files write ``1.0``/``0.0``) and the images
  ``ISIC2018_Task3_Training_Input/<image>.jpg``.
* **AIROGS** (paper 003's glaucoma set): ``train_labels.csv`` with
  ``challenge_id,class`` (``RG`` referable glaucoma, ``NRG`` not) and the
  images ``<challenge_id>.jpg`` in the root or in its numbered part folders
  (``0/`` ... ``5/``, as released). Classes ``NRG``, ``RG``.

Each is an :class:`~agt_jax.data.table.ImageTable` with one-hot labels and
one "patient" per image (none of the three publishes patient ids; say so
where patient-level splits matter), ``splits`` holding paper 002's 8:2
split with a class-balanced test set (``fold_mode=official`` uses it;
random patient folds remain available) and ``meta["shots"]`` the
many / medium / few tiers by training count. Bad rows are refused with the file,
row and column; a missing dataset lists where it looked and how to get it.
"""

from __future__ import annotations

import csv
import pathlib

import numpy as np

from agt_jax.data.errors import DatasetNotFoundError, LabelFileError
from agt_jax.data.table import ImageTable

APTOS_CLASSES = ("grade0", "grade1", "grade2", "grade3", "grade4")
ISIC_CLASSES = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
AIROGS_CLASSES = ("NRG", "RG")

_HOW = {
  "APTOS 2019": (
    "Download the Kaggle competition 'aptos2019-blindness-detection' and "
    "unzip it: the root holds train.csv and train_images/."
  ),
  "ISIC 2018": (
    "Download ISIC 2018 Task 3's training input and ground truth from the "
    "ISIC archive and unzip both into one root."
  ),
  "AIROGS": (
    "Download the AIROGS training set (train_labels.csv and the image "
    "parts 0-5) from its Zenodo record and unzip the parts into one root."
  ),
}


def _rows(path: pathlib.Path, need: tuple[str, ...]):
  """``(row number, row)`` of a CSV whose header has every ``need``
  column (a byte-order mark tolerated)."""
  with open(path, newline="", encoding="utf-8-sig") as f:
    reader = csv.DictReader(f)
    header = [h.strip() for h in reader.fieldnames or ()]
    missing = [c for c in need if c not in header]
    if missing:
      raise LabelFileError(
        f"{path}: missing column(s) {missing}; the header is {header}."
      )
    reader.fieldnames = header
    for r, row in enumerate(reader, start=2):
      yield r, {k: (v or "").strip() for k, v in row.items() if k}


def _find(root, name: str, candidates) -> pathlib.Path:
  root = pathlib.Path(root).expanduser()
  for c in candidates:
    if (root / c).is_file():
      return root / c
  raise DatasetNotFoundError(
    name, root, [root / c for c in candidates], _HOW[name]
  )


def balanced_test_split(
  labels, *, fraction: float = 0.2, seed: int = 0
) -> np.ndarray:
  """`[n]` ``"train"``/``"test"``: paper 002's 8:2 split with a
  class-balanced test set, in our reading (the paper gives no counts): the
  test set takes ``round(fraction * n) // C`` images of every class, at most
  half of a class, drawn at random (seeded); the rest train."""
  labels = np.asarray(labels)
  y = labels.argmax(1)
  n, c = labels.shape
  per_class = int(round(fraction * n)) // c
  rng = np.random.default_rng(seed)
  splits = np.full(n, "train", dtype=object)
  for k in range(c):
    rows = np.flatnonzero(y == k)
    take = min(per_class, len(rows) // 2)
    splits[rng.choice(rows, size=take, replace=False)] = "test"
  return splits


def shot_tiers(train_counts) -> dict:
  """Many / medium / few classes (our reading of paper 002, which sets the
  tiers per dataset without thresholds): the classes ranked by training
  count and cut into thirds, the larger thirds first."""
  order = np.argsort(-np.asarray(train_counts), kind="stable")
  head, medium, tail = np.array_split(order, 3)
  return {
    "head": sorted(head.tolist()),
    "medium": sorted(medium.tolist()),
    "tail": sorted(tail.tolist()),
  }


def _table(name, classes, ids, labels, paths, root) -> ImageTable:
  ids = np.asarray(ids)
  labels = np.asarray(labels, np.uint8).reshape(len(ids), len(classes))
  splits = balanced_test_split(labels)
  train = labels[splits == "train"].sum(0)
  return ImageTable(
    name=name,
    class_names=tuple(classes),
    image_ids=ids,
    labels=labels,
    patient_ids=ids.copy(),  # no patient ids are published
    paths=np.array([str(p) for p in paths], dtype=object),
    splits=splits,
    meta={
      "root": str(root),
      "single_label": True,
      "patients": "one per image",
      "split": "8:2 with a class-balanced test set (fold_mode=official)",
      "shots": shot_tiers(train),
    },
  )


def load_aptos(root) -> ImageTable:
  """APTOS 2019's labelled training images (DR grade 0-4, one-hot)."""
  csv_path = _find(root, "APTOS 2019", ["train.csv"])
  root = csv_path.parent
  ids, labels, paths = [], [], []
  for r, row in _rows(csv_path, ("id_code", "diagnosis")):
    grade = row["diagnosis"]
    if grade not in {"0", "1", "2", "3", "4"}:
      raise LabelFileError(
        f"{csv_path}: row {r}, column 'diagnosis' is {grade!r}; expected a "
        "DR grade 0-4."
      )
    if not row["id_code"]:
      raise LabelFileError(f"{csv_path}: row {r}, column 'id_code' is empty.")
    ids.append(row["id_code"])
    labels.append(np.eye(5, dtype=np.uint8)[int(grade)])
    paths.append(root / "train_images" / f"{row['id_code']}.png")
  return _table("aptos2019", APTOS_CLASSES, ids, labels, paths, root)


def load_isic2018(root) -> ImageTable:
  """ISIC 2018 Task 3's training images (7 diagnoses, one-hot)."""
  name = "ISIC2018_Task3_Training_GroundTruth.csv"
  csv_path = _find(
    root,
    "ISIC 2018",
    [name, f"ISIC2018_Task3_Training_GroundTruth/{name}"],
  )
  root = pathlib.Path(root).expanduser()
  ids, labels, paths = [], [], []
  for r, row in _rows(csv_path, ("image", *ISIC_CLASSES)):
    values = []
    for c in ISIC_CLASSES:
      try:
        v = float(row[c])
      except ValueError:
        v = -1.0
      if v not in (0.0, 1.0):
        raise LabelFileError(
          f"{csv_path}: row {r}, column {c!r} is {row[c]!r}; expected 0 or 1."
        )
      values.append(int(v))
    if sum(values) != 1:
      raise LabelFileError(
        f"{csv_path}: row {r} has {sum(values)} diagnoses set; Task 3 has "
        "exactly one per image."
      )
    ids.append(row["image"])
    labels.append(values)
    paths.append(root / "ISIC2018_Task3_Training_Input" / f"{row['image']}.jpg")
  return _table("isic2018", ISIC_CLASSES, ids, labels, paths, root)


def load_airogs(root) -> ImageTable:
  """AIROGS' training images (referable glaucoma or not, one-hot)."""
  csv_path = _find(root, "AIROGS", ["train_labels.csv"])
  root = csv_path.parent
  where = {}
  for folder in [root, *(root / str(k) for k in range(6))]:
    if folder.is_dir():
      for f in folder.glob("*.jpg"):
        where.setdefault(f.stem, f)
  ids, labels, paths = [], [], []
  for r, row in _rows(csv_path, ("challenge_id", "class")):
    cls = row["class"]
    if cls not in AIROGS_CLASSES:
      raise LabelFileError(
        f"{csv_path}: row {r}, column 'class' is {cls!r}; expected RG or NRG."
      )
    ids.append(row["challenge_id"])
    labels.append([cls == "NRG", cls == "RG"])
    # A missing image keeps its expected path; the image check names it.
    paths.append(
      where.get(row["challenge_id"], root / f"{row['challenge_id']}.jpg")
    )
  return _table("airogs", AIROGS_CLASSES, ids, labels, paths, root)


LOADERS = {
  "aptos2019": load_aptos,
  "isic2018": load_isic2018,
  "airogs": load_airogs,
}
