"""Tiny datasets in the exact on-disk formats, generated on demand.

ODIR rows are real rows of the packaged label table (keywords and expected
image-level vectors); images are small synthetic fundus-like JPEG/PNGs with a
black border so the FOV crop has something to do.
"""

from __future__ import annotations

import csv
import io
import pathlib
import pickle
import tarfile

import numpy as np
from PIL import Image

from agt_jax.data import odir, rfmid
from agt_jax.data import odir_keywords as kw

ASCII_COMMA_IMAGES = {"305_left", "372_left", "541_right"}
XLSX_PATIENTS = ("2", "305", "372")  # 305 gets a numeric ID cell
FULL_DF_IMAGES = ("0_right", "2_right", "0_left", "2_left")


def fundus_image(h: int, w: int, seed: int) -> np.ndarray:
  """A bright disc on black, off-centre, so the FOV bbox is not the frame."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:h, :w]
  cy, cx, r = h / 2 + 3, w / 2 - 5, min(h, w) * 0.42
  inside = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
  img = np.zeros((h, w, 3), np.uint8)
  base = rng.integers(60, 200, size=3)
  img[inside] = np.clip(
    base + rng.normal(0, 12, size=(inside.sum(), 3)), 20, 255
  ).astype(np.uint8)
  return img


def label_rows() -> dict[str, dict]:
  """image_id -> {patient_id, eye, keywords (list), labels (raw, keep_zero)}."""
  t = odir.packaged_label_table(ignorable_policy="keep_zero")
  return {
    i: {"patient_id": p, "eye": e, "keywords": k.split(";"), "labels": y}
    for i, p, e, k, y in zip(
      t.image_ids, t.patient_ids, t.eyes, t.keywords, t.labels
    )
  }


def _cell(image_id: str, keywords: list[str]) -> str:
  return (", " if image_id in ASCII_COMMA_IMAGES else "，").join(keywords)


def _patient_labels(rows, pid):
  both = [rows[f"{pid}_left"]["labels"], rows[f"{pid}_right"]["labels"]]
  union = np.maximum(*both)
  union[0] = int(both[0][0] and both[1][0] and union[1:].sum() == 0)
  return union.tolist()


def write_jpeg(path: pathlib.Path, seed: int, size=(96, 128)):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(fundus_image(*size, seed)).save(path, quality=92)


def make_odir_challenge(
  root: pathlib.Path, patients=XLSX_PATIENTS
) -> pathlib.Path:
  """``ODIR-5K_Training_Annotations(Updated)_V2.xlsx`` + image folder."""
  import openpyxl

  rows = label_rows()
  wb = openpyxl.Workbook()
  ws = wb.active
  ws.title = "Sheet1"
  ws.append(list(odir.XLSX_COLUMNS))
  for n, pid in enumerate(patients):
    left, right = rows[f"{pid}_left"], rows[f"{pid}_right"]
    ws.append(
      [
        int(pid) if pid == "305" else pid,
        60 + n,
        "Female" if n % 2 else "Male",
        f"{pid}_left.jpg",
        f"{pid}_right.jpg",
        _cell(f"{pid}_left", left["keywords"]),
        _cell(f"{pid}_right", right["keywords"]),
      ]
      + _patient_labels(rows, pid)
    )
    assert ws.cell(ws.max_row, 1).data_type == ("n" if pid == "305" else "s")
  root.mkdir(parents=True, exist_ok=True)
  wb.save(root / "ODIR-5K_Training_Annotations(Updated)_V2.xlsx")
  img_dir = root / "ODIR-5K_Training_Images" / "ODIR-5K_Training_Dataset"
  for n, pid in enumerate(patients):
    for e, eye in enumerate(("left", "right")):
      write_jpeg(img_dir / f"{pid}_{eye}.jpg", seed=10 * n + e)
  return root


def make_odir_kaggle_csv(
  root: pathlib.Path, images=FULL_DF_IMAGES
) -> pathlib.Path:
  """A ``full_df.csv`` (CRLF, right-eye rows first, list-strings) + images."""
  rows = label_rows()
  buf = io.StringIO()
  w = csv.writer(buf, lineterminator="\r\n")
  w.writerow(odir.FULL_DF_COLUMNS)
  for image_id in images:
    r = rows[image_id]
    pid = r["patient_id"]
    first = kw.keyword_class(r["keywords"][0]) or "N"
    onehot = [int(c == first) for c in kw.ODIR_CLASSES]
    w.writerow(
      [
        pid,
        57,
        "Female",
        f"{pid}_left.jpg",
        f"{pid}_right.jpg",
        _cell(f"{pid}_left", rows[f"{pid}_left"]["keywords"]),
        _cell(f"{pid}_right", rows[f"{pid}_right"]["keywords"]),
      ]
      + _patient_labels(rows, pid)
      + [
        f"../input/ocular-disease-recognition-odir5k/ODIR-5K/"
        f"Training Images/{image_id}.jpg",
        f"['{first}']",
        str(onehot),
        f"{image_id}.jpg",
      ]
    )
  root.mkdir(parents=True, exist_ok=True)
  (root / "full_df.csv").write_bytes(buf.getvalue().encode())
  for n, image_id in enumerate(images):
    write_jpeg(
      root / "preprocessed_images" / f"{image_id}.jpg",
      seed=50 + n,
      size=(64, 64),
    )
  return root


def rfmid_rows(n: int, seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  raw = (rng.random((n, 46)) < 0.08).astype(np.uint8)
  raw[:, 0] = raw[:, 1:].any(1)  # Disease_Risk = any condition
  return raw


def make_rfmid(
  root: pathlib.Path, layout: str = "challenge", sizes=None
) -> dict[str, np.ndarray]:
  """An RFMiD tree with 47-column CSVs (CRLF) and ``{ID}.png`` images."""
  sizes = sizes or {"train": 6, "val": 3, "test": 3}
  out = {}
  for k, (split, n) in enumerate(sizes.items()):
    ann, img_dir = rfmid._LAYOUTS[layout][split]
    raw = rfmid_rows(n, seed=k)
    out[split] = raw
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(rfmid.CSV_COLUMNS)
    for i, row in enumerate(raw, start=1):
      w.writerow([i] + row.tolist())
    (root / ann).parent.mkdir(parents=True, exist_ok=True)
    (root / ann).write_bytes(buf.getvalue().encode())
    for i in range(1, n + 1):
      p = root / img_dir / f"{i}.png"
      p.parent.mkdir(parents=True, exist_ok=True)
      Image.fromarray(fundus_image(48, 72, seed=100 * k + i)).save(p)
  return out


def make_cifar100_tarball(
  root: pathlib.Path, per_class: int = 6, test_per_class: int = 2
) -> pathlib.Path:
  """A ``cifar-100-python.tar.gz`` with the real pickle layout, tiny."""
  rng = np.random.default_rng(0)

  def split(n):
    y = np.repeat(np.arange(100), n)
    x = rng.integers(0, 256, size=(len(y), 3072), dtype=np.uint8)
    return {
      b"data": x,
      b"fine_labels": y.tolist(),
      b"coarse_labels": (y // 5).tolist(),
    }

  meta = {
    b"fine_label_names": [f"class_{i:02d}".encode() for i in range(100)],
    b"coarse_label_names": [f"super_{i}".encode() for i in range(20)],
  }
  root.mkdir(parents=True, exist_ok=True)
  path = root / "cifar-100-python.tar.gz"
  with tarfile.open(path, "w:gz") as tf:
    for name, obj in (
      ("train", split(per_class)),
      ("test", split(test_per_class)),
      ("meta", meta),
    ):
      blob = pickle.dumps(obj)
      info = tarfile.TarInfo(f"cifar-100-python/{name}")
      info.size = len(blob)
      tf.addfile(info, io.BytesIO(blob))
  return path


def make_fgadr(root: pathlib.Path, n: int = 5, size: int = 40) -> dict:
  """An FGADR ``Seg-set/`` in the release's layout: PNG images, the six
  mask folders (0/255 PNGs; image 0 has no NV mask file), and the
  header-less grading CSV. Returns the grades and masks written."""
  from agt_jax.data import fgadr

  seg = root / "Seg-set"
  rng = np.random.default_rng(7)
  grades = rng.integers(0, 5, n)
  masks = rng.random((n, size, size, len(fgadr.LESIONS))) < 0.05
  (seg / fgadr.IMAGES).mkdir(parents=True)
  for folder in fgadr.FOLDERS.values():
    (seg / folder).mkdir()
  rows = []
  for i in range(n):
    name = f"{i + 1:04d}_{i % 3}.png"
    rows.append(f"{name},{grades[i]}")
    Image.fromarray(fundus_image(size, size, seed=i)).save(
      seg / fgadr.IMAGES / name
    )
    for j, (lesion, folder) in enumerate(fgadr.FOLDERS.items()):
      if i == 0 and lesion == "NV":
        masks[i, ..., j] = False  # absent file = empty mask
        continue
      Image.fromarray(masks[i, ..., j].astype(np.uint8) * 255).save(
        seg / folder / name
      )
  (seg / fgadr.GRADES).write_text("\n".join(rows) + "\n")
  return {"grades": grades, "masks": masks, "seg": seg}


def make_aptos(root: pathlib.Path, grades=(0, 2, 4, 1, 0, 3)) -> list[str]:
  """APTOS 2019's layout: ``train.csv`` (id_code,diagnosis) and
  ``train_images/<id_code>.png``."""
  (root / "train_images").mkdir(parents=True)
  ids = [f"{i:03x}c0ffee{i}" for i in range(len(grades))]
  with open(root / "train.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["id_code", "diagnosis"])
    for i, (k, g) in enumerate(zip(ids, grades)):
      w.writerow([k, g])
      Image.fromarray(fundus_image(40, 48, i)).save(
        root / "train_images" / f"{k}.png"
      )
  return ids


def make_isic2018(root: pathlib.Path, diagnoses=(0, 1, 1, 6, 2)) -> list[str]:
  """ISIC 2018 Task 3's layout: the ground-truth CSV (image + one-hot
  columns written as 1.0/0.0, as the official file) and
  ``ISIC2018_Task3_Training_Input/<image>.jpg``."""
  (root / "ISIC2018_Task3_Training_Input").mkdir(parents=True)
  ids = [f"ISIC_{24306 + i:07d}" for i in range(len(diagnoses))]
  with open(
    root / "ISIC2018_Task3_Training_GroundTruth.csv", "w", newline=""
  ) as f:
    w = csv.writer(f)
    w.writerow(["image", "MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"])
    for i, (k, d) in enumerate(zip(ids, diagnoses)):
      w.writerow([k] + ["1.0" if j == d else "0.0" for j in range(7)])
      write_jpeg(root / "ISIC2018_Task3_Training_Input" / f"{k}.jpg", i)
  return ids


def make_airogs(
  root: pathlib.Path, classes=("NRG", "RG", "NRG", "NRG")
) -> list:
  """AIROGS' layout: ``train_labels.csv`` (challenge_id,class) and the
  images in numbered part folders."""
  root.mkdir(parents=True)
  ids = [f"TRAIN{i:06d}" for i in range(len(classes))]
  with open(root / "train_labels.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["challenge_id", "class"])
    for i, (k, c) in enumerate(zip(ids, classes)):
      w.writerow([k, c])
      part = root / str(i % 2)
      part.mkdir(exist_ok=True)
      write_jpeg(part / f"{k}.jpg", i)
  return ids
