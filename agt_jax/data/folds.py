"""Patient-level k-fold splits: both eyes of a patient are always together."""

from __future__ import annotations

import numpy as np

from agt_jax.data.table import ImageTable
from agt_jax.errors import InputError

MODES = ("random", "stratified")  # patient k-fold; see fold_indices for
# the table's own splits ("official", "official_val")


def _patient_label_union(table: ImageTable):
  patients, inverse = np.unique(table.patient_ids, return_inverse=True)
  union = np.zeros((len(patients), table.num_classes), np.uint8)
  np.maximum.at(union, inverse, table.labels)
  return patients, inverse, union


def _iterative_stratification(
  labels: np.ndarray, k: int, rng: np.random.Generator
) -> np.ndarray:
  """Sechidis et al. (2011) iterative stratification of multi-label rows.

  Repeatedly takes the label with the fewest remaining examples and deals its
  examples to the fold that most wants that label (ties: the fold that wants
  the most examples overall, then at random). Rows without labels are dealt
  last to the folds that want the most examples.
  """
  n, c = labels.shape
  fold = np.full(n, -1)
  want_rows = np.full(k, n / k)
  want_label = np.outer(np.full(k, 1.0 / k), labels.sum(0))  # [k, c]
  remaining = labels.astype(bool).copy()
  while remaining.any():
    counts = remaining.sum(0)
    counts[counts == 0] = n + 1
    label = int(np.argmin(counts))
    rows = np.flatnonzero(remaining[:, label])
    rng.shuffle(rows)
    for row in rows:
      best = np.flatnonzero(want_label[:, label] == want_label[:, label].max())
      if len(best) > 1:
        best = best[want_rows[best] == want_rows[best].max()]
      f = int(rng.choice(best))
      fold[row] = f
      want_rows[f] -= 1
      want_label[f] -= labels[row]
      remaining[row] = False
  for row in rng.permutation(np.flatnonzero(fold < 0)):
    f = int(np.argmax(want_rows))
    fold[row] = f
    want_rows[f] -= 1
  return fold


def patient_folds(
  table: ImageTable, *, num_folds: int = 5, seed: int = 0, mode: str = "random"
) -> np.ndarray:
  """Assigns every image a fold in ``[0, num_folds)`` by patient.

  ``random`` (the paper): the sorted patient IDs are permuted with ``seed``
  and cut into ``num_folds`` near-equal parts. ``stratified``: iterative
  stratification on each patient's label union, which keeps thin tail classes
  spread over the folds.

  Returns:
    `[n]` int fold of each image.
  """
  if mode not in MODES:
    raise InputError(f"fold mode must be one of {MODES}, got {mode!r}.")
  patients, inverse, union = _patient_label_union(table)
  if len(patients) < num_folds:
    raise InputError(
      f"{table.name}: {len(patients)} patients cannot make "
      f"{num_folds} folds."
    )
  rng = np.random.default_rng(seed)
  if mode == "random":
    patient_fold = np.empty(len(patients), np.int64)
    for f, part in enumerate(
      np.array_split(rng.permutation(len(patients)), num_folds)
    ):
      patient_fold[part] = f
  else:
    patient_fold = _iterative_stratification(union, num_folds, rng)
  return patient_fold[inverse]


def fold_indices(
  table: ImageTable,
  fold: int,
  *,
  num_folds: int = 5,
  seed: int = 0,
  mode: str = "random",
) -> tuple[np.ndarray, np.ndarray, dict]:
  """``(train_idx, test_idx, assignment)`` for test fold ``fold``.

  ``mode="official"`` uses the table's own ``splits`` column instead (RFMiD,
  CIFAR): train = ``train`` + ``val``, test = ``test``; ``fold`` must be 0.
  ``mode="official_val"`` trains on ``train`` alone and scores ``val`` (the
  AGT paper's RFMiD protocol: "since the test set annotations are not
  publicly available, all quantitative evaluations on RFMiD are conducted on
  the validation set"); a ``test`` split, if present, is left unused.
  ``assignment`` records everything needed to rebuild the split (seed, mode,
  and the test patients) and is saved with every run.
  """
  if mode == "official":
    if table.splits is None or not np.any(table.splits == "test"):
      raise InputError(
        f"{table.name}: fold mode 'official' needs a table "
        "with an official 'test' split."
      )
    if fold != 0:
      raise InputError(
        f"fold mode 'official' has a single split (fold 0), "
        f"got fold {fold}."
      )
    test = table.splits == "test"
    unused = np.zeros(len(table), bool)
  elif mode == "official_val":
    if table.splits is None or not (
      np.any(table.splits == "val") and np.any(table.splits == "train")
    ):
      raise InputError(
        f"{table.name}: fold mode 'official_val' needs a table with "
        "official 'train' and 'val' splits."
      )
    if fold != 0:
      raise InputError(
        f"fold mode 'official_val' has a single split (fold 0), got fold "
        f"{fold}."
      )
    test = table.splits == "val"
    unused = table.splits == "test"
  elif not 0 <= fold < num_folds:
    raise InputError(f"fold must be in [0, {num_folds}), got {fold}.")
  else:
    folds = patient_folds(table, num_folds=num_folds, seed=seed, mode=mode)
    test = folds == fold
    unused = np.zeros(len(table), bool)
  train = ~test & ~unused
  if not test.any() or not train.any():
    raise InputError(
      f"{table.name}: test fold {fold} of {num_folds} holds "
      f"{int(test.sum())} of {len(test)} images "
      f"({len(np.unique(table.patient_ids))} patients), so its "
      f"{'test' if not test.any() else 'training'} split is empty; use "
      "more images or fewer folds."
    )
  assignment = {
    "dataset": table.name,
    "num_folds": num_folds,
    "fold": fold,
    "seed": seed,
    "mode": mode,
    "num_train_images": int(train.sum()),
    "num_test_images": int(test.sum()),
    "num_unused_images": int(unused.sum()),
    "test_patients": sorted(
      set(table.patient_ids[test].tolist()), key=lambda p: (len(p), p)
    ),
  }
  return np.flatnonzero(train), np.flatnonzero(test), assignment


def fold_split(
  table: ImageTable,
  fold: int,
  *,
  num_folds: int = 5,
  seed: int = 0,
  mode: str = "random",
) -> tuple[ImageTable, ImageTable, dict]:
  """``(train, test, assignment)`` tables for test fold ``fold``."""
  train, test, assignment = fold_indices(
    table, fold, num_folds=num_folds, seed=seed, mode=mode
  )
  return table.take(train), table.take(test), assignment


def validation_split(
  table: ImageTable, train_idx, *, fraction: float = 0.1, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
  """``(fit_idx, val_idx)``: a patient-level validation split carved from a
  training fold.

  The training fold's patients are permuted with ``seed`` and the first
  ``round(fraction * patients)`` (at least one when ``fraction > 0``) form
  the validation split; both eyes of a patient stay on one side. The test
  fold is not touched. ``fraction=0`` gives an empty validation split.
  """
  if not 0.0 <= fraction < 1.0:
    raise InputError(
      f"validation fraction must be in [0, 1), got " f"{fraction}."
    )
  train_idx = np.asarray(train_idx)
  if fraction == 0.0:
    return train_idx, train_idx[:0]
  patients, inverse = np.unique(
    table.patient_ids[train_idx], return_inverse=True
  )
  n_val = max(1, int(round(fraction * len(patients))))
  if n_val >= len(patients):
    raise InputError(
      f"{table.name}: a validation split of {fraction:.0%} "
      f"leaves no training patient ({len(patients)} in the "
      "training fold)."
    )
  # Seeded apart from the fold assignment so the two never coincide.
  rng = np.random.default_rng([seed, 1])
  is_val = np.zeros(len(patients), bool)
  is_val[rng.permutation(len(patients))[:n_val]] = True
  val = is_val[inverse]
  return train_idx[~val], train_idx[val]
