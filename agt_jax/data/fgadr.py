"""FGADR's segmentation set (lesion masks + DR grades), and its synthetic
stand-in, for the paper's pretraining stage (§3.8: "all methods are
initialized with backbone networks pre-trained on the FGADR dataset
following the setting in RLKD", a network trained jointly on lesion
segmentation and DR grading).

On-disk layout of the release (``root`` is the folder holding ``Seg-set/``,
or ``Seg-set/`` itself)::

  Seg-set/
    Original_Images/<name>.png
    Microaneurysms_Masks/<name>.png     (MA)
    Hemohedge_Masks/<name>.png          (HE, the release's spelling)
    HardExudate_Masks/<name>.png        (EX)
    SoftExudate_Masks/<name>.png        (SE)
    IRMA_Masks/<name>.png               (IRMA)
    Neovascularization_Masks/<name>.png (NV)
    DR_Seg_Grading_Label.csv            (no header: <name>.png,<grade 0-4>)

A mask file absent from a mask folder is an empty mask (no such lesion; the
count is kept in ``meta["missing_masks"]``); a missing folder, a missing
image or a bad grading row is an error naming what and where.

``fgadr-synth`` is the offline stand-in: label rows of odir5k-synth's label
table (mostly diabetic ones) rendered with a disjoint render seed under new
ids, with the masks the renderer knows it drew (microaneurysms,
haemorrhages, hard exudates, cotton-wool spots, neovascular tufts; IRMA is
never drawn) and the DR grade of the drawn signs. It shares the label table
and the renderer with odir5k-synth, and no image, id or render seed.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import pathlib

import numpy as np
from PIL import Image

from agt_jax.data.errors import DatasetNotFoundError, LabelFileError

LESIONS = ("MA", "HE", "EX", "SE", "IRMA", "NV")
FOLDERS = {
  "MA": "Microaneurysms_Masks",
  "HE": "Hemohedge_Masks",
  "EX": "HardExudate_Masks",
  "SE": "SoftExudate_Masks",
  "IRMA": "IRMA_Masks",
  "NV": "Neovascularization_Masks",
}
IMAGES = "Original_Images"
GRADES = "DR_Seg_Grading_Label.csv"
NUM_GRADES = 5
SYNTH_NAME = "fgadr-synth"
SYNTH_SEED = (
  2_000_003  # odir5k-synth renders with 0, its pretraining set 1_000_003
)
SYNTH_IMAGES = 1842  # the size of FGADR's Seg-set
SYNTHETIC_NOTE = (
  "fgadr-synth: label rows of the ODIR-5K label table rendered with a "
  "disjoint seed, with the lesion masks and DR grade the renderer drew "
  "(synthetic stand-in for FGADR; shares no image, id or render seed with "
  "odir5k-synth)"
)
INSTRUCTIONS = """
FGADR cannot be downloaded at run time. Request the Seg-set from its
authors (https://csyizhou.github.io/FGADR/), unpack it, and pass the folder
that holds Seg-set/ (or Seg-set/ itself): --data fgadr:/data/FGADR
"""


@dataclasses.dataclass(frozen=True)
class SegTable:
  """Images with a DR grade and one mask per lesion.

  Attributes:
    name: ``"fgadr"`` or ``"fgadr-synth"``.
    image_ids: `[n]` str (file stems).
    grades: `[n]` int in 0-4.
    paths: `[n]` object, image files (None when rendered).
    mask_paths: lesion -> `[n]` object, mask files ("" where absent).
    meta: provenance (``synthetic``, ``root``, ``missing_masks``, ...).
  """

  name: str
  image_ids: np.ndarray
  grades: np.ndarray
  paths: np.ndarray | None = None
  mask_paths: dict | None = None
  meta: dict = dataclasses.field(default_factory=dict)

  def __len__(self) -> int:
    return len(self.image_ids)

  @property
  def grade_onehot(self) -> np.ndarray:
    """`[n, 5]` uint8: the grades as the samplers' label rows."""
    return np.eye(NUM_GRADES, dtype=np.uint8)[self.grades]


def _seg_root(root: pathlib.Path) -> pathlib.Path | None:
  for cand in (root / "Seg-set", root):
    if (cand / GRADES).is_file() and (cand / IMAGES).is_dir():
      return cand
  return None


def read_grades(path: pathlib.Path) -> tuple[list[str], np.ndarray]:
  """``(image file names, grades)`` of ``DR_Seg_Grading_Label.csv``: two
  columns, no header (a first row whose name is not an image file is
  taken as one)."""
  names, grades = [], []
  with open(path, newline="", encoding="utf-8-sig") as f:
    for r, row in enumerate(csv.reader(f), start=1):
      if not row or not "".join(row).strip():
        continue
      if len(row) < 2:
        raise LabelFileError(
          f"{path}: row {r} has {len(row)} column(s); expected "
          "'<image file>,<grade 0-4>'."
        )
      name, grade = row[0].strip(), row[1].strip()
      if r == 1 and not name.lower().endswith((".png", ".jpg", ".jpeg")):
        continue  # a header
      if grade not in ("0", "1", "2", "3", "4"):
        raise LabelFileError(
          f"{path}: row {r}, column 2 (grade): {grade!r} is not a DR grade "
          "0-4."
        )
      names.append(name)
      grades.append(int(grade))
  if not names:
    raise LabelFileError(f"{path}: no grading rows.")
  dup = sorted({n for n in names if names.count(n) > 1})
  if dup:
    raise LabelFileError(f"{path}: image(s) graded twice: {dup[:5]}.")
  return names, np.array(grades, np.int64)


def load_fgadr(root) -> SegTable:
  """The FGADR Seg-set under ``root`` (see the module docstring)."""
  root = pathlib.Path(root).expanduser()
  seg = _seg_root(root)
  if seg is None:
    looked = [f"{c / GRADES} + {c / IMAGES}/" for c in (root / "Seg-set", root)]
    raise DatasetNotFoundError("FGADR", root, looked, INSTRUCTIONS)
  for lesion, folder in FOLDERS.items():
    if not (seg / folder).is_dir():
      raise DatasetNotFoundError(
        "FGADR",
        root,
        [f"{seg / folder}/ (the {lesion} masks)"],
        INSTRUCTIONS,
      )
  names, grades = read_grades(seg / GRADES)
  paths, masks, missing = [], {k: [] for k in LESIONS}, {}
  for r, name in enumerate(names, start=1):
    image = seg / IMAGES / name
    if not image.is_file():
      raise LabelFileError(
        f"{seg / GRADES}: row {r} names {name!r}, which is not in "
        f"{seg / IMAGES}/."
      )
    paths.append(str(image))
    for lesion, folder in FOLDERS.items():
      m = seg / folder / name
      masks[lesion].append(str(m) if m.is_file() else "")
      missing[lesion] = missing.get(lesion, 0) + (not m.is_file())
  return SegTable(
    name="fgadr",
    image_ids=np.array([pathlib.Path(n).stem for n in names]),
    grades=grades,
    paths=np.array(paths, dtype=object),
    mask_paths={k: np.array(v, dtype=object) for k, v in masks.items()},
    meta={"synthetic": False, "root": str(root), "missing_masks": missing},
  )


def _resized(path: str, size: int, mode: str) -> np.ndarray:
  with Image.open(path) as im:
    im = im.convert(mode)
    resample = (
      Image.Resampling.NEAREST if mode == "L" else Image.Resampling.BILINEAR
    )
    return np.asarray(im.resize((size, size), resample))


def arrays(table: SegTable, size: int) -> tuple[np.ndarray, np.ndarray]:
  """``(images uint8 [n, s, s, 3], masks bool [n, s, s, 6])`` of a real
  table, each image and mask resized to ``size`` (bilinear / nearest; the
  release's images are square fundus photographs)."""
  n = len(table)
  x = np.zeros((n, size, size, 3), np.uint8)
  m = np.zeros((n, size, size, len(LESIONS)), bool)
  for i in range(n):
    x[i] = _resized(table.paths[i], size, "RGB")
    for j, lesion in enumerate(LESIONS):
      p = table.mask_paths[lesion][i]
      if p:
        m[i, ..., j] = _resized(p, size, "L") > 0
  return x, m


def synth_table(*, seed: int = 0, n: int = SYNTH_IMAGES) -> tuple:
  """``(SegTable, label rows)`` of fgadr-synth: ``n`` rows of the ODIR-5K
  label table drawn with replacement, 90% from images with D and 10% from
  normal ones (``seed`` picks them); ids ``fg<k>``. Grades are set when the
  images are rendered (:func:`render_synth`)."""
  from agt_jax.data import synth

  base = synth.synth_table()
  rng = np.random.default_rng((SYNTH_SEED, seed))
  d = np.flatnonzero(base.labels[:, base.class_names.index("D")] == 1)
  normal = np.flatnonzero(base.labels.sum(1) == base.labels[:, 0])
  n_norm = n // 10
  pick = np.concatenate([rng.choice(d, n - n_norm), rng.choice(normal, n_norm)])
  rng.shuffle(pick)
  ids = np.array([f"fg{k}" for k in range(n)])
  rows = []
  for k, i in enumerate(pick):
    r = synth.row(base, int(i))
    rows.append({**r, "image": ids[k]})
  table = SegTable(
    name=SYNTH_NAME,
    image_ids=ids,
    grades=np.zeros(n, np.int64),
    meta={
      "synthetic": True,
      "note": SYNTHETIC_NOTE,
      "render_seed": SYNTH_SEED + seed,
    },
  )
  return table, rows


def render_synth(
  size: int, *, seed: int = 0, n: int = SYNTH_IMAGES, progress: bool = True
) -> tuple[SegTable, np.ndarray, np.ndarray]:
  """``(table, images, masks)`` of fgadr-synth at ``size`` (grades from the
  drawn diabetic signs, :func:`agt_jax.data.synth_render.dr_grade`)."""
  from tqdm.auto import tqdm

  from agt_jax.data import synth_render

  table, rows = synth_table(seed=seed, n=n)
  x = np.zeros((n, size, size, 3), np.uint8)
  m = np.zeros((n, size, size, len(LESIONS)), bool)
  grades = np.zeros(n, np.int64)
  bar = (
    tqdm(
      total=n, desc=f"rendering {SYNTH_NAME} {size}px (synthetic)", unit="img"
    )
    if progress
    else None
  )
  for i, row in enumerate(rows):
    ann: dict = {}
    x[i] = synth_render.render(
      row, size, seed=SYNTH_SEED + seed, annotations=ann
    )
    m[i] = np.stack([ann[k] for k in LESIONS], -1)
    grades[i] = ann["dr_grade"]
    if bar is not None:
      bar.update(1)
  if bar is not None:
    bar.close()
  return dataclasses.replace(table, grades=grades), x, m


def load(
  name: str,
  *,
  data_dir=None,
  size: int,
  cache_dir=None,
  seed: int = 0,
  max_images: int | None = None,
) -> tuple[SegTable, np.ndarray, np.ndarray]:
  """``(table, images, masks)`` of ``fgadr`` (from ``data_dir``) or
  ``fgadr-synth``, prepared once at ``size`` into ``cache_dir``."""
  from agt_jax import io

  if name == SYNTH_NAME:
    n = max_images or SYNTH_IMAGES
    key = f"{SYNTH_NAME}-{size}-{seed}-{n}"
  elif name == "fgadr":
    if data_dir is None:
      raise LabelFileError(
        "dataset 'fgadr' is read from a local folder: pass --data "
        "fgadr:PATH; the offline stand-in is 'fgadr-synth'."
      )
    table = load_fgadr(data_dir)
    if max_images:
      keep = slice(0, max_images)
      table = dataclasses.replace(
        table,
        image_ids=table.image_ids[keep],
        grades=table.grades[keep],
        paths=table.paths[keep],
        mask_paths={k: v[keep] for k, v in table.mask_paths.items()},
      )
    root = str(pathlib.Path(data_dir).expanduser().absolute())
    digest = hashlib.sha1(
      (root + "|" + ",".join(table.image_ids)).encode()
    ).hexdigest()[:12]
    key = f"fgadr-{digest}-{size}"
  else:
    raise LabelFileError(f"unknown segmentation dataset {name!r}.")
  cache = pathlib.Path(cache_dir or io.cache_dir()) / f"{key}.npz"
  if cache.exists():
    with np.load(cache) as z:
      x, m, grades = z["images"], z["masks"], z["grades"]
    if name == SYNTH_NAME:
      table, _ = synth_table(seed=seed, n=n)
    table = dataclasses.replace(table, grades=grades)
    return table, x, m
  if name == SYNTH_NAME:
    table, x, m = render_synth(size, seed=seed, n=n)
  else:
    x, m = arrays(table, size)
  cache.parent.mkdir(parents=True, exist_ok=True)
  tmp = cache.with_suffix(".tmp.npz")
  np.savez(tmp, images=x, masks=m, grades=table.grades)
  tmp.replace(cache)
  return table, x, m


@dataclasses.dataclass(frozen=True)
class StackedSource:
  """Image and masks as one uint8 `[S, S, 3 + L]` array per index (masks as
  0/255), so the training pipeline's crop and flip move both alike."""

  images: np.ndarray
  masks: np.ndarray
  indices: np.ndarray

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, i: int) -> np.ndarray:
    j = int(self.indices[int(i)])
    m = self.masks[j].astype(np.uint8) * 255
    return np.concatenate([self.images[j], m], axis=-1)
