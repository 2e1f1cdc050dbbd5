"""Stacked ensembles (paper 003): out-of-fold probabilities of several
models, a gradient-boosted meta-learner per class under nested
cross-validation, class mappings between datasets, and the meta-learner's
per-model importances.

The out-of-fold (OOF) matrix holds, for every image, each model's
probabilities from the fold model that held that image out; stacking is
only honest if that is checked, so :func:`assemble_oof` refuses a row that
came from a model trained on it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from agt_jax.errors import AgtError

__all__ = [
  "LeakError",
  "assemble_oof",
  "class_mapping",
  "with_derived",
  "fit_meta",
  "make_meta",
  "meta_importance",
  "nested_cv_importance",
  "nested_cv_stack",
  "predict_meta",
]

# Our ODIR -> RFMiD correspondences (paper 003 evaluates on RFMiD but gives
# no class mapping; these are the same diseases by name).
ODIR_TO_RFMID = {"N": "NORMAL", "D": "DR", "A": "ARMD", "M": "MYA", "G": "ODC"}
# Ours too, for paper 003's zero-shot sets: ODIR's glaucoma against AIROGS'
# referable glaucoma; ODIR's diabetic retinopathy against APTOS' grades 1-4
# (a derived column, "DR"). ISIC 2018 (skin) shares no class with ODIR.
EXTERNAL_MAPPINGS = {
  "rfmid": ODIR_TO_RFMID,
  "airogs": {"G": "RG"},
  "aptos2019": {"D": "DR"},
  "isic2018": {},
}
# Target columns made from an external dataset's own: name -> the classes
# whose union it is.
DERIVED = {"aptos2019": {"DR": ("grade1", "grade2", "grade3", "grade4")}}


def with_derived(labels, class_names, derived) -> tuple[np.ndarray, list]:
  """``(labels, class names)`` with a column appended per ``derived``
  entry: the OR of the named classes' columns."""
  labels = np.asarray(labels)
  names = list(class_names)
  cols = [labels]
  for name, parts in derived.items():
    missing = [c for c in parts if c not in names]
    if missing:
      raise ValueError(f"derived class {name}: {missing} not in {names}.")
    cols.append(
      labels[:, [names.index(c) for c in parts]].max(1, keepdims=True)
    )
  return np.concatenate(cols, 1), names + list(derived)


class LeakError(AgtError):
  """A fold model's prediction of an image it was trained on."""


def assemble_oof(
  predictions: Mapping[str, Mapping[int, tuple]],
  test_rows: Mapping[int, np.ndarray],
  num_rows: int,
) -> np.ndarray:
  """``[n, M, C]`` out-of-fold probabilities.

  Args:
    predictions: model -> fold -> ``(index [m], probs [m, C])``: the rows a
      fold model predicted (``test_predictions.npz``'s ``index``).
    test_rows: fold -> the rows that fold held out (from ``folds.json``,
      not from the predictions).
    num_rows: ``n``.

  Raises:
    LeakError: a fold model predicted a row its fold did not hold out, a
      row is predicted twice, or a row is missing.
  """
  owner = np.full(num_rows, -1)
  for fold, rows in test_rows.items():
    rows = np.asarray(rows)
    if (owner[rows] >= 0).any():
      raise LeakError(
        f"fold {fold} holds out rows that another fold also " "holds out."
      )
    owner[rows] = fold
  models = list(predictions)
  out = None
  for m, name in enumerate(models):
    seen = np.zeros(num_rows, bool)
    for fold, (index, probs) in predictions[name].items():
      index = np.asarray(index)
      wrong = index[owner[index] != fold]
      if wrong.size:
        raise LeakError(
          f"{name} fold {fold}: {wrong.size} predicted rows were not held "
          f"out by fold {fold} (e.g. row {int(wrong[0])}, held out by "
          f"fold {int(owner[wrong[0]])}): its model trained on them."
        )
      if seen[index].any():
        raise LeakError(f"{name}: rows predicted twice.")
      seen[index] = True
      if out is None:
        out = np.full((num_rows, len(models), probs.shape[1]), np.nan)
      out[index, m] = probs
    if not seen.all():
      raise LeakError(
        f"{name}: {int((~seen).sum())} rows have no "
        "out-of-fold prediction (a fold is missing)."
      )
  return out


def make_meta(kind: str = "hgb", *, seed: int = 0) -> Callable[[], object]:
  """A factory of one binary meta-classifier: scikit-learn's
  ``HistGradientBoostingClassifier`` (``hgb``), or ``xgboost``'s
  ``XGBClassifier`` with its defaults (paper 003 wraps XGBoost in a
  ``MultiOutputClassifier``; it states no hyperparameters), or a logistic
  regression (``logistic``: a linear stacker, the simplest rival)."""
  if kind == "hgb":
    from sklearn.ensemble import HistGradientBoostingClassifier

    return lambda: HistGradientBoostingClassifier(random_state=seed)
  if kind == "logistic":
    from sklearn.linear_model import LogisticRegression

    return lambda: LogisticRegression(max_iter=2000)
  if kind == "xgboost":
    try:
      import xgboost
    except ImportError:
      raise ImportError(
        "meta=xgboost needs the xgboost extra: pip install "
        "'agt-jax[xgboost]'."
      ) from None
    return lambda: xgboost.XGBClassifier(random_state=seed)
  raise ValueError(
    f"unknown meta-learner {kind!r}; known: hgb, logistic, " "xgboost."
  )


class _Constant:
  """The training prevalence, for a class with one label value only."""

  def __init__(self, p):
    self.p = float(p)

  def predict_proba(self, x):
    n = len(x)
    return np.stack([np.full(n, 1 - self.p), np.full(n, self.p)], 1)


def fit_meta(x, y, make: Callable[[], object]) -> list:
  """One meta-classifier per class on ``x [n, F]``, ``y [n, C]``."""
  y = np.asarray(y)
  models = []
  for c in range(y.shape[1]):
    if 0 < y[:, c].sum() < len(y):
      models.append(make().fit(x, y[:, c]))
    else:
      models.append(_Constant(y[:, c].mean()))
  return models


def predict_meta(models, x) -> np.ndarray:
  return np.stack([m.predict_proba(x)[:, 1] for m in models], 1)


def nested_cv_stack(
  x, y, folds, make: Callable[[], object], *, return_models: bool = False
):
  """Stacked probabilities ``[n, C]``: the rows of fold ``k`` are scored by
  meta-learners fitted on the other folds' rows only.

  As in any two-level stacking, the *base* models that produced the other
  folds' OOF rows were trained with fold ``k`` among their images; the
  meta-learner itself never sees fold ``k``'s rows or labels.

  With ``return_models`` also returns ``{k: per-class meta-learners fitted
  without fold k}`` (for :func:`nested_cv_importance`).
  """
  folds = np.asarray(folds)
  out = np.full(np.asarray(y).shape, np.nan)
  fitted = {}
  for k in np.unique(folds):
    held = folds == k
    fitted[int(k)] = fit_meta(x[~held], y[~held], make)
    out[held] = predict_meta(fitted[int(k)], x[held])
  return (out, fitted) if return_models else out


def class_mapping(
  source: Sequence[str],
  target: Sequence[str],
  mapping: Mapping[str, str] | None = None,
) -> tuple[list[tuple[int, int]], list[str]]:
  """``([(source column, target column)], unmapped source classes)``.

  ``mapping`` names source -> target classes (default: identical names);
  a mapping to a class the target lacks is an error.
  """
  mapping = (
    dict(mapping)
    if mapping is not None
    else {c: c for c in source if c in target}
  )
  pairs, unmapped = [], []
  for i, c in enumerate(source):
    t = mapping.get(c)
    if t is None:
      unmapped.append(c)
      continue
    if t not in target:
      raise ValueError(
        f"class mapping {c} -> {t}: {t!r} is not a class of "
        f"the target ({list(target)})."
      )
    pairs.append((i, list(target).index(t)))
  return pairs, unmapped


def meta_importance(
  models,
  x,
  y,
  num_models: int,
  *,
  repeats: int = 5,
  seed: int = 0,
  undefined: float = 0.0,
) -> np.ndarray:
  """``[M, C]``: how much class ``c``'s meta-learner relies on model ``m``
  (permutation importance: the drop in ROC AUC when all of ``m``'s
  columns are shuffled together; the boosted trees have no importances of
  their own).

  Scored on the rows given: pass rows the meta-learners did not fit on
  (:func:`nested_cv_importance`), since on their own training rows a
  flexible learner also "relies" on columns it merely memorised. A class
  with one label value in ``y`` has no AUC and gets ``undefined``.
  """
  from sklearn.metrics import roc_auc_score

  x, y = np.asarray(x), np.asarray(y)
  n_cls = y.shape[1]
  width = x.shape[1] // num_models
  rng = np.random.default_rng(seed)
  out = np.zeros((num_models, n_cls))
  for c, model in enumerate(models):
    if not 0 < y[:, c].sum() < len(y):
      out[:, c] = undefined
      continue
    base = roc_auc_score(y[:, c], model.predict_proba(x)[:, 1])
    for m in range(num_models):
      drops = []
      for _ in range(repeats):
        xp = x.copy()
        perm = rng.permutation(len(x))
        xp[:, m * width : (m + 1) * width] = x[
          perm, m * width : (m + 1) * width
        ]
        drops.append(
          base - roc_auc_score(y[:, c], model.predict_proba(xp)[:, 1])
        )
      out[m, c] = float(np.mean(drops))
  return out


def nested_cv_importance(
  fold_models: Mapping[int, list],
  x,
  y,
  folds,
  num_models: int,
  *,
  repeats: int = 5,
  seed: int = 0,
) -> np.ndarray:
  """``[M, C]`` permutation importance on held-out rows: fold ``k``'s
  meta-learners (fitted without fold ``k``, from
  ``nested_cv_stack(..., return_models=True)``) are scored on fold ``k``'s
  rows only; folds are averaged weighted by their row counts, over the
  folds where class ``c`` has both label values (NaN if none has)."""
  x, y, folds = np.asarray(x), np.asarray(y), np.asarray(folds)
  total = np.zeros((num_models, y.shape[1]))
  weight = np.zeros(y.shape[1])
  for k, models in fold_models.items():
    held = folds == k
    imp = meta_importance(
      models,
      x[held],
      y[held],
      num_models,
      repeats=repeats,
      seed=seed + int(k),
      undefined=np.nan,
    )
    ok = ~np.isnan(imp[0])
    total[:, ok] += held.sum() * imp[:, ok]
    weight[ok] += held.sum()
  return np.where(weight > 0, total / np.maximum(weight, 1), np.nan)
