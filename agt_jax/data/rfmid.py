"""RFMiD (Retinal Fundus Multi-disease Image Dataset), 29-class setting.

Layouts accepted under the root:

* challenge: ``Training_Set/Training_Set/{Training/, RFMiD_Training_Labels.csv}``,
  ``Evaluation_Set/Evaluation_Set/{Validation/, RFMiD_Validation_Labels.csv}``,
  ``Test_Set/Test_Set/{Test/, RFMiD_Testing_Labels.csv}``;
* IEEE DataPort: ``1. Original Images/{a. Training Set, b. Validation Set,
  c. Testing Set}/`` and ``2. Groundtruths/{a. RFMiD_Training_Labels.csv,
  b. RFMiD_Validation_Labels.csv, c. RFMiD_Testing_Labels.csv}``.

Classes: ``NORMAL`` (= not ``Disease_Risk``; the normal class, as N in ODIR),
the 27 RIADD conditions, and ``OTHER`` = OR of the 18 conditions with fewer
than 10 images in the whole dataset. The official split is used as is.
"""

from __future__ import annotations

import csv
import io
import pathlib

import numpy as np

from agt_jax.data.errors import DatasetNotFoundError, LabelFileError
from agt_jax.data.table import ImageTable

CONDITIONS = (
  "DR",
  "ARMD",
  "MH",
  "DN",
  "MYA",
  "BRVO",
  "TSLN",
  "ERM",
  "LS",
  "MS",
  "CSR",
  "ODC",
  "CRVO",
  "TV",
  "AH",
  "ODP",
  "ODE",
  "ST",
  "AION",
  "PT",
  "RT",
  "RS",
  "CRS",
  "EDN",
  "RPEC",
  "MHL",
  "RP",
  "CWS",
  "CB",
  "ODPM",
  "PRH",
  "MNF",
  "HR",
  "CRAO",
  "TD",
  "CME",
  "PTCR",
  "CF",
  "VH",
  "MCA",
  "VS",
  "BRAO",
  "PLQ",
  "HPED",
  "CL",
)
CSV_COLUMNS = ("ID", "Disease_Risk") + CONDITIONS  # 47 columns
MAIN_27 = CONDITIONS[:27]
RARE_18 = CONDITIONS[27:]
CLASSES_29 = ("NORMAL",) + MAIN_27 + ("OTHER",)

_LAYOUTS = {
  "challenge": {
    "train": (
      "Training_Set/Training_Set/RFMiD_Training_Labels.csv",
      "Training_Set/Training_Set/Training",
    ),
    "val": (
      "Evaluation_Set/Evaluation_Set/RFMiD_Validation_Labels.csv",
      "Evaluation_Set/Evaluation_Set/Validation",
    ),
    "test": (
      "Test_Set/Test_Set/RFMiD_Testing_Labels.csv",
      "Test_Set/Test_Set/Test",
    ),
  },
  "dataport": {
    "train": (
      "2. Groundtruths/a. RFMiD_Training_Labels.csv",
      "1. Original Images/a. Training Set",
    ),
    "val": (
      "2. Groundtruths/b. RFMiD_Validation_Labels.csv",
      "1. Original Images/b. Validation Set",
    ),
    "test": (
      "2. Groundtruths/c. RFMiD_Testing_Labels.csv",
      "1. Original Images/c. Testing Set",
    ),
  },
}

INSTRUCTIONS = """
RFMiD cannot be downloaded automatically. Get it from IEEE DataPort
(https://ieee-dataport.org/open-access/retinal-fundus-multi-disease-image-dataset-rfmid)
or the RIADD challenge (https://riadd.grand-challenge.org/download-all-classes/)
and unpack it so that the root holds either the challenge tree
  Training_Set/Training_Set/RFMiD_Training_Labels.csv + Training/1.png ...
  Evaluation_Set/Evaluation_Set/RFMiD_Validation_Labels.csv + Validation/
  Test_Set/Test_Set/RFMiD_Testing_Labels.csv + Test/
or the DataPort tree
  2. Groundtruths/a. RFMiD_Training_Labels.csv ...
  1. Original Images/a. Training Set/1.png ...
Then pass the root, e.g. `--data rfmid:/data/rfmid`.
"""


def read_labels_csv(path) -> tuple[list[str], np.ndarray]:
  """``(ids, raw [n, 46])`` from a 47-column RFMiD label file (CRLF ok).

  Raises:
    LabelFileError: wrong/missing columns, or a value outside {0, 1}, naming
      the file, row and column.
  """
  path = pathlib.Path(path)
  reader = csv.reader(
    io.StringIO(path.read_text(encoding="utf-8-sig"), newline="")
  )
  header = [h.strip() for h in next(reader, [])]
  if tuple(header) != CSV_COLUMNS:
    missing = [c for c in CSV_COLUMNS if c not in header]
    extra = [c for c in header if c not in CSV_COLUMNS]
    raise LabelFileError(
      f"{path}: expected the {len(CSV_COLUMNS)} RFMiD columns "
      f"ID, Disease_Risk, DR, ..., CL; missing {missing}, unexpected "
      f"{extra}."
    )
  ids, rows = [], []
  for r, row in enumerate(reader, start=2):
    if not row or all(not c.strip() for c in row):
      continue
    if len(row) != len(CSV_COLUMNS):
      raise LabelFileError(
        f"{path}: row {r} has {len(row)} columns, expected "
        f"{len(CSV_COLUMNS)}."
      )
    values = []
    for name, cell in zip(CSV_COLUMNS[1:], row[1:]):
      if cell.strip() not in ("0", "1"):
        raise LabelFileError(
          f"{path}: row {r}, column {name!r}: label value "
          f"{cell!r} is not 0 or 1."
        )
      values.append(int(cell))
    ids.append(row[0].strip())
    rows.append(values)
  return ids, np.array(rows, np.uint8).reshape(-1, len(CSV_COLUMNS) - 1)


def to_29_classes(raw: np.ndarray) -> np.ndarray:
  """`[n, 46]` (Disease_Risk + 45) -> `[n, 29]` (NORMAL, 27, OTHER)."""
  col = {c: i + 1 for i, c in enumerate(CONDITIONS)}
  normal = 1 - raw[:, 0]
  main = raw[:, [col[c] for c in MAIN_27]]
  other = raw[:, [col[c] for c in RARE_18]].max(1)
  return np.concatenate([normal[:, None], main, other[:, None]], 1).astype(
    np.uint8
  )


def _image_path(image_dir: pathlib.Path, image_id: str) -> pathlib.Path:
  for ext in (".png", ".jpg", ".jpeg", ".tif"):
    p = image_dir / f"{image_id}{ext}"
    if p.exists():
      return p
  return image_dir / f"{image_id}.png"


def load_rfmid(root, *, splits=None) -> ImageTable:
  """Loads the requested official splits of RFMiD.

  ``splits=None`` loads train, val and test, or train and val alone where
  the test set (its labels were not public at first) is absent: the paper's
  protocol (``fold_mode="official_val"``) needs only those two, and the
  ``official`` fold mode then says the test split is missing.

  Returns:
    One :class:`ImageTable` with ``splits`` set; image IDs are
    ``"{split}/{ID}"`` (IDs restart at 1 in each split).
  """
  root = pathlib.Path(root).expanduser()
  if splits is None:
    for files in _LAYOUTS.values():
      ann, image_dir = root / files["test"][0], root / files["test"][1]
      if ann.is_file() and image_dir.is_dir():
        splits = ("train", "val", "test")
        break
    else:
      splits = ("train", "val")
  looked = []
  for layout, files in _LAYOUTS.items():
    present = {s: (root / files[s][0], root / files[s][1]) for s in splits}
    looked += [f"{a} + {d}/ ({layout})" for a, d in present.values()]
    if all(a.is_file() and d.is_dir() for a, d in present.values()):
      ids, labels, paths, split_col = [], [], [], []
      for split, (ann, image_dir) in present.items():
        sid, raw = read_labels_csv(ann)
        ids += [f"{split}/{i}" for i in sid]
        labels.append(to_29_classes(raw))
        paths += [str(_image_path(image_dir, i)) for i in sid]
        split_col += [split] * len(sid)
      ids = np.array(ids)
      return ImageTable(
        name="rfmid",
        class_names=CLASSES_29,
        image_ids=ids,
        labels=np.concatenate(labels),
        patient_ids=ids.copy(),
        paths=np.array(paths, dtype=object),
        splits=np.array(split_col),
        meta={"layout": layout, "synthetic": False, "root": str(root)},
      )
  raise DatasetNotFoundError("RFMiD", root, looked, INSTRUCTIONS)
