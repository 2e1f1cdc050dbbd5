"""ODIR-5K from its on-disk releases, with image-level labels from keywords.

Supported layouts under the root a user gives:

* challenge release: ``ODIR-5K_Training_Annotations(Updated)_V2.xlsx`` and
  ``ODIR-5K_Training_Images/ODIR-5K_Training_Dataset/{ID}_{eye}.jpg``;
* OIA-ODIR: ``Training Set/Annotation/training annotation (English).xlsx``
  and ``Training Set/Images/``;
* Kaggle: ``ODIR-5K/ODIR-5K/data.xlsx`` with ``ODIR-5K/ODIR-5K/Training
  Images/`` (all 7,000 images), or ``full_df.csv`` alone (6,392 rows, one per
  image; ``preprocessed_images/`` or the training image folder).

Image labels always come from the keywords of the image's own eye
(:mod:`agt_jax.data.odir_keywords`), never from the patient-level N..O
columns or Kaggle's single-label ``target``.
"""

from __future__ import annotations

import csv
import importlib.resources
import io
import pathlib

import numpy as np

from agt_jax.data import odir_keywords as kw
from agt_jax.data.errors import DatasetNotFoundError, LabelFileError
from agt_jax.data.table import ImageTable

XLSX_COLUMNS = (
  "ID",
  "Patient Age",
  "Patient Sex",
  "Left-Fundus",
  "Right-Fundus",
  "Left-Diagnostic Keywords",
  "Right-Diagnostic Keywords",
  "N",
  "D",
  "G",
  "C",
  "A",
  "H",
  "M",
  "O",
)
FULL_DF_COLUMNS = XLSX_COLUMNS + ("filepath", "labels", "target", "filename")

INSTRUCTIONS = """
ODIR-5K cannot be downloaded automatically. Register at
https://odir2019.grand-challenge.org/dataset/ (or use the Kaggle copy
"andrewmvd/ocular-disease-recognition-odir5k") and unpack it so that the root
contains ONE of:
  ODIR-5K_Training_Annotations(Updated)_V2.xlsx
  ODIR-5K_Training_Images/ODIR-5K_Training_Dataset/0_left.jpg ...
or (Kaggle)
  ODIR-5K/ODIR-5K/data.xlsx + ODIR-5K/ODIR-5K/Training Images/0_left.jpg ...
  full_df.csv + preprocessed_images/ (or the Training Images folder)
Then pass that root, e.g. `--data odir5k:/data/odir5k`. Without real data, use
the offline synthetic dataset `odir5k-synth`.
"""

# (annotation file, image folder) pairs, most complete first.
_XLSX_LAYOUTS = (
  (
    "ODIR-5K_Training_Annotations(Updated)_V2.xlsx",
    "ODIR-5K_Training_Images/ODIR-5K_Training_Dataset",
  ),
  ("ODIR-5K_Training_Annotations(Updated)_V2.xlsx", "ODIR-5K_Training_Images"),
  (
    "Training Set/Annotation/training annotation (English).xlsx",
    "Training Set/Images",
  ),
  ("ODIR-5K/ODIR-5K/data.xlsx", "ODIR-5K/ODIR-5K/Training Images"),
)
_CSV_IMAGE_DIRS = ("ODIR-5K/ODIR-5K/Training Images", "preprocessed_images")


def _patient_id(value, path, row) -> str:
  if value is None or str(value).strip() == "":
    raise LabelFileError(f"{path}: row {row}, column 'ID': empty patient ID.")
  if isinstance(value, (int, float)):
    return str(int(value))
  text = str(value).strip()
  try:
    return str(int(float(text)))
  except ValueError:
    raise LabelFileError(
      f"{path}: row {row}, column 'ID': {text!r} is not a " "patient number."
    ) from None


def _binary(value, path, row, column) -> int:
  try:
    v = float(value)
  except (TypeError, ValueError):
    v = None
  if v not in (0.0, 1.0):
    raise LabelFileError(
      f"{path}: row {row}, column {column!r}: label value "
      f"{value!r} is not 0 or 1."
    )
  return int(v)


def _check_header(header, expected, path):
  header = tuple("" if h is None else str(h).strip() for h in header)
  missing = [c for c in expected if c not in header]
  if missing or header[: len(expected)] != tuple(expected):
    raise LabelFileError(
      f"{path}: expected columns {list(expected)}; missing {missing}, "
      f"found {list(header)}."
    )


def _records_to_table(records, name, meta) -> ImageTable:
  ids = np.array([r["image_id"] for r in records])
  if len(set(ids.tolist())) != len(ids):
    raise LabelFileError(f"{name}: duplicate image IDs in the annotations.")
  return ImageTable(
    name=name,
    class_names=kw.ODIR_CLASSES,
    image_ids=ids,
    labels=np.stack([r["labels"] for r in records]).astype(np.uint8),
    patient_ids=np.array([r["patient_id"] for r in records]),
    paths=np.array([r["path"] for r in records], dtype=object),
    eyes=np.array([r["eye"] for r in records]),
    keywords=np.array(
      [";".join(kw.split_keywords(r["keywords"])) for r in records]
    ),
    splits=np.array(["train"] * len(records)),
    meta=meta,
  )


def read_annotation_xlsx(path) -> list[dict]:
  """Patient rows of the official 15-column annotation workbook.

  Returns one dict per **image** (left, then right) with ``image_id``,
  ``patient_id``, ``eye``, ``keywords``, ``file`` and the patient-level
  ``patient_labels`` (N..O, for cross-checks only).
  """
  import openpyxl  # imported lazily: only the real-data path needs it

  path = pathlib.Path(path)
  wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
  ws = wb.worksheets[0]
  rows = ws.iter_rows(values_only=True)
  header = next(rows, None)
  if header is None:
    raise LabelFileError(f"{path}: the first sheet is empty.")
  _check_header(header, XLSX_COLUMNS, path)
  out = []
  for r, values in enumerate(rows, start=2):
    if values is None or all(v is None for v in values):
      continue
    v = dict(zip(XLSX_COLUMNS, values))
    pid = _patient_id(v["ID"], path, r)
    patient_labels = [_binary(v[c], path, r, c) for c in kw.ODIR_CLASSES]
    for eye, side in (("left", "Left"), ("right", "Right")):
      file = str(v[f"{side}-Fundus"] or f"{pid}_{eye}.jpg").strip()
      out.append(
        {
          "image_id": pathlib.Path(file).stem,
          "patient_id": pid,
          "eye": eye,
          "file": file,
          "keywords": str(v[f"{side}-Diagnostic Keywords"] or ""),
          "patient_labels": patient_labels,
        }
      )
  wb.close()
  return out


def read_full_df_csv(path) -> list[dict]:
  """Rows of the Kaggle ``full_df.csv`` (one per image, CRLF tolerant).

  The keyword cell of the row's own eye (from ``filename``) is used; the
  patient-level N..O and the single-label ``labels``/``target`` are ignored.
  """
  path = pathlib.Path(path)
  text = path.read_text(encoding="utf-8-sig")
  reader = csv.reader(io.StringIO(text, newline=""))
  header = next(reader, None)
  if header is None:
    raise LabelFileError(f"{path}: empty file.")
  _check_header(header, FULL_DF_COLUMNS, path)
  col = {c: i for i, c in enumerate(header)}
  out = []
  for r, row in enumerate(reader, start=2):
    if not row or all(not c.strip() for c in row):
      continue
    if len(row) < len(FULL_DF_COLUMNS):
      raise LabelFileError(
        f"{path}: row {r} has {len(row)} columns, expected "
        f"{len(FULL_DF_COLUMNS)}."
      )
    pid = _patient_id(row[col["ID"]], path, r)
    for c in kw.ODIR_CLASSES:
      _binary(row[col[c]], path, r, c)
    file = row[col["filename"]].strip()
    stem = pathlib.Path(file).stem
    if stem.endswith("_left"):
      eye, side = "left", "Left"
    elif stem.endswith("_right"):
      eye, side = "right", "Right"
    else:
      raise LabelFileError(
        f"{path}: row {r}, column 'filename': {file!r} does "
        "not end in _left/_right."
      )
    out.append(
      {
        "image_id": stem,
        "patient_id": pid,
        "eye": eye,
        "file": file,
        "keywords": row[col[f"{side}-Diagnostic Keywords"]],
      }
    )
  return out


def _finish(
  records, image_dir: pathlib.Path, policy: str, source: str
) -> ImageTable:
  for rec in records:
    rec["labels"] = kw.keywords_to_labels(rec["keywords"])
    rec["path"] = str(image_dir / rec["file"])
    rec.update(kw.keyword_flags(rec["keywords"]))
  labels = np.stack([r["labels"] for r in records])
  labels, keep = kw.apply_ignorable_policy(
    labels,
    [r["ignorable_only"] for r in records],
    [r["non_fundus"] for r in records],
    policy,
  )
  for rec, y in zip(records, labels):
    rec["labels"] = y
  records = [r for r, k in zip(records, keep) if k]
  return _records_to_table(
    records,
    "odir5k",
    {
      "source": source,
      "ignorable_policy": policy,
      "synthetic": False,
      "image_dir": str(image_dir),
    },
  )


def load_odir5k(
  root, *, ignorable_policy: str = "as_normal", annotation: str | None = None
) -> ImageTable:
  """Loads ODIR-5K training images from any supported layout under ``root``.

  Args:
    root: dataset root (see the module docstring for the layouts).
    ignorable_policy: ``as_normal`` (default), ``drop`` or ``keep_zero``
      (:func:`agt_jax.data.odir_keywords.apply_ignorable_policy`).
    annotation: optional explicit path of the xlsx or ``full_df.csv``.

  Returns:
    An :class:`ImageTable` with image-level labels and patient IDs.

  Raises:
    DatasetNotFoundError: nothing recognisable under ``root``, with where it
      looked and how to get the data.
  """
  root = pathlib.Path(root).expanduser()
  looked = []
  if annotation is not None:
    ann = pathlib.Path(annotation)
    if not ann.is_file():
      raise DatasetNotFoundError("ODIR-5K", root, [ann], INSTRUCTIONS)
    candidates = (
      [(ann, d) for _, d in _XLSX_LAYOUTS]
      if ann.suffix == ".xlsx"
      else [(ann, d) for d in _CSV_IMAGE_DIRS]
    )
  else:
    candidates = [(root / a, d) for a, d in _XLSX_LAYOUTS]
    candidates += [(root / "full_df.csv", d) for d in _CSV_IMAGE_DIRS]
  for ann, image_dir in candidates:
    image_dir = root / image_dir
    looked.append(f"{ann} + {image_dir}/")
    if ann.is_file() and image_dir.is_dir():
      if ann.suffix == ".xlsx":
        records = read_annotation_xlsx(ann)
      else:
        records = read_full_df_csv(ann)
      return _finish(records, image_dir, ignorable_policy, str(ann))
  raise DatasetNotFoundError("ODIR-5K", root, looked, INSTRUCTIONS)


def packaged_label_table(*, ignorable_policy: str = "as_normal") -> ImageTable:
  """The shipped image-level label table of the 7,000 ODIR-5K training images
  (no image paths; see ``resources/PROVENANCE.md``)."""
  text = (
    importlib.resources.files("agt_jax.data")
    / "resources"
    / "odir5k_image_labels.csv"
  ).read_text(encoding="utf-8")
  rows = list(csv.DictReader(io.StringIO(text)))
  labels = np.array(
    [[int(r[c]) for c in kw.ODIR_CLASSES] for r in rows], np.uint8
  )
  labels, keep = kw.apply_ignorable_policy(
    labels,
    [r["ignorable_only"] == "1" for r in rows],
    [r["non_fundus"] == "1" for r in rows],
    ignorable_policy,
  )
  rows = [r for r, k in zip(rows, keep) if k]
  return ImageTable(
    name="odir5k-labels",
    class_names=kw.ODIR_CLASSES,
    image_ids=np.array([pathlib.Path(r["image"]).stem for r in rows]),
    labels=labels[keep],
    patient_ids=np.array([r["patient_id"] for r in rows]),
    eyes=np.array([r["eye"] for r in rows]),
    keywords=np.array([r["keywords"] for r in rows]),
    splits=np.array(["train"] * len(rows)),
    meta={
      "source": "agt_jax/data/resources/odir5k_image_labels.csv",
      "ignorable_policy": ignorable_policy,
      "synthetic": False,
    },
  )
