"""CIFAR100-LT from a user-provided CIFAR-100 (Cao et al. 2019 profile).

Accepted under the root: ``cifar-100-python.tar.gz``, its extracted
``cifar-100-python/`` folder, or a prepared tfds ``cifar100`` directory
(``cifar100/<version>/`` read with ``tfds.data_source``, no TensorFlow).
"""

from __future__ import annotations

import pathlib
import pickle
import tarfile

import numpy as np

from agt_jax.data.errors import DatasetNotFoundError, UnsafePickleError
from agt_jax.data.images import ArrayImageSource
from agt_jax.data.table import ImageTable

IMBALANCE_FACTORS = (100, 50, 10)
INSTRUCTIONS = """
CIFAR-100 cannot be downloaded at run time. Copy the python version
(cifar-100-python.tar.gz, from https://www.cs.toronto.edu/~kriz/cifar.html) into
the root, or its extracted cifar-100-python/ folder, or a tfds data_dir that
holds a prepared cifar100/ dataset; then pass that root, e.g.
`--data cifar100:/data/cifar100`.
"""


def lt_class_counts(
  imbalance_factor: float, *, num_classes: int = 100, max_per_class: int = 500
) -> np.ndarray:
  """Exponential profile :math:`n_c = \\lfloor n_{max} \\rho^{-c/(C-1)}
  \\rfloor` with imbalance factor :math:`\\rho` (Cao et al. 2019)."""
  c = np.arange(num_classes)
  return (
    max_per_class * (1.0 / imbalance_factor) ** (c / (num_classes - 1.0))
  ).astype(np.int64)


def lt_indices(labels, imbalance_factor: float, *, seed: int = 0) -> np.ndarray:
  """Indices of the long-tailed subset: for each class in order, its indices
  are shuffled with a legacy ``RandomState(seed)`` and the first ``n_c`` kept
  (the reference implementation's procedure, so the subset is reproducible)."""
  labels = np.asarray(labels)
  num_classes = int(labels.max()) + 1
  counts = lt_class_counts(
    imbalance_factor,
    num_classes=num_classes,
    max_per_class=int(np.bincount(labels).max()),
  )
  rng = np.random.RandomState(seed)
  keep = []
  for c, n in enumerate(counts):
    idx = np.flatnonzero(labels == c)
    rng.shuffle(idx)
    keep.append(idx[:n])
  return np.concatenate(keep)


def _numpy_global(module: str, name: str):
  import importlib

  try:
    mod = importlib.import_module(f"numpy._core.{module}")
  except ImportError:  # numpy 1
    mod = importlib.import_module(f"numpy.core.{module}")
  return getattr(mod, name)


# Everything the CIFAR python pickles (and numpy arrays pickled by numpy 1
# or 2, protocols 2-5) refer to: array reconstruction (``_reconstruct``,
# ``_frombuffer``), scalars, dtypes, and the latin-1 bytes encoding of
# protocol 2. Nothing that runs other code.
_ALLOWED = {
  **{
    (f"numpy.{core}.{module}", name): (
      lambda module=module, name=name: _numpy_global(module, name)
    )
    for core in ("core", "_core")
    for module, name in (
      ("multiarray", "_reconstruct"),
      ("multiarray", "scalar"),
      ("numeric", "_frombuffer"),
    )
  },
  ("numpy", "ndarray"): lambda: np.ndarray,
  ("numpy", "dtype"): lambda: np.dtype,
  ("_codecs", "encode"): lambda: __import__("codecs").encode,
}


class _DataOnlyUnpickler(pickle.Unpickler):
  """Admits dicts, lists, bytes, numbers and numpy arrays; any other global
  (``os.system``, a class with ``__reduce__``...) is refused before it is
  looked up, so a crafted file cannot run code."""

  def __init__(self, file, *, name: str):
    super().__init__(file, encoding="bytes")
    self.name = name

  def find_class(self, module, name):
    make = _ALLOWED.get((module, name))
    if make is None:
      raise UnsafePickleError(
        f"{self.name}: refused to unpickle {module}.{name}; a CIFAR-100 "
        "python file holds only arrays, lists and numbers, so this file "
        "is not one (replace it with the original from "
        "https://www.cs.toronto.edu/~kriz/cifar.html)."
      )
    return make()


def _unpickle(blob: bytes, name: str = "pickle") -> dict:
  import io

  try:
    return _DataOnlyUnpickler(io.BytesIO(blob), name=name).load()
  except UnsafePickleError:
    raise
  except Exception as e:  # truncated or not a pickle at all
    raise UnsafePickleError(
      f"{name}: not a readable CIFAR-100 python "
      f"pickle ({type(e).__name__}: {e})."
    ) from None


def _from_python(files: dict[str, bytes]):
  meta = _unpickle(files["meta"], "cifar-100-python/meta")
  names = [n.decode() for n in meta[b"fine_label_names"]]
  out = {}
  for split in ("train", "test"):
    d = _unpickle(files[split], f"cifar-100-python/{split}")
    x = np.asarray(d[b"data"], np.uint8).reshape(-1, 3, 32, 32)
    out[split] = (x.transpose(0, 2, 3, 1), np.asarray(d[b"fine_labels"]))
  return out, names


def _from_tfds(data_dir: pathlib.Path):
  import tensorflow_datasets as tfds

  out = {}
  builder = tfds.builder("cifar100", data_dir=str(data_dir))
  for split in ("train", "test"):
    src = builder.as_data_source(split)
    items = [src[i] for i in range(len(src))]
    out[split] = (
      np.stack([it["image"] for it in items]).astype(np.uint8),
      np.array([int(it["label"]) for it in items]),
    )
  names = builder.info.features["label"].names
  return out, list(names)


def read_cifar100(root):
  """``({"train": (x [n,32,32,3], y [n]), "test": ...}, class_names)``."""
  root = pathlib.Path(root).expanduser()
  tar = root / "cifar-100-python.tar.gz"
  folder = root / "cifar-100-python"
  looked = [tar, folder, root / "cifar100"]
  if tar.is_file():
    with tarfile.open(tar) as tf:
      files = {}
      for m in tf.getmembers():
        name = pathlib.PurePosixPath(m.name).name
        if name in ("train", "test", "meta") and m.isfile():
          files[name] = tf.extractfile(m).read()
    return _from_python(files)
  if folder.is_dir() and (folder / "train").is_file():
    return _from_python(
      {n: (folder / n).read_bytes() for n in ("train", "test", "meta")}
    )
  if (root / "cifar100").is_dir():
    return _from_tfds(root)
  raise DatasetNotFoundError("CIFAR-100", root, looked, INSTRUCTIONS)


def load_cifar100_lt(root, *, imbalance_factor: float = 100, seed: int = 0):
  """CIFAR100-LT train split and the balanced test split.

  Returns:
    ``{"train": (ImageTable, ArrayImageSource), "test": (...)}``; tables have
    one-hot labels over 100 classes and ``meta["shots"]`` with the head
    (> 100 train images), medium (20-100) and tail (< 20) class indices.
  """
  data, names = read_cifar100(root)
  x_tr, y_tr = data["train"]
  keep = lt_indices(y_tr, imbalance_factor, seed=seed)
  counts = np.bincount(y_tr[keep], minlength=len(names))
  shots = {
    "head": np.flatnonzero(counts > 100).tolist(),
    "medium": np.flatnonzero((counts >= 20) & (counts <= 100)).tolist(),
    "tail": np.flatnonzero(counts < 20).tolist(),
  }
  out = {}
  for split, (x, y) in (
    ("train", (x_tr[keep], y_tr[keep])),
    ("test", data["test"]),
  ):
    ids = np.array([f"{split}/{i}" for i in range(len(y))])
    table = ImageTable(
      name=f"cifar100-lt-{int(imbalance_factor)}",
      class_names=tuple(names),
      image_ids=ids,
      labels=np.eye(len(names), dtype=np.uint8)[y],
      patient_ids=ids,
      splits=np.array([split] * len(y)),
      meta={
        "imbalance_factor": imbalance_factor,
        "seed": seed,
        "shots": shots,
        "synthetic": False,
      },
    )
    out[split] = (table, ArrayImageSource(np.ascontiguousarray(x)))
  return out
