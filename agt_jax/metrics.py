"""Evaluation metrics, computed on the host with numpy and scikit-learn.

* :func:`odir_score` is the official ODIR-2019 challenge metric.
* :func:`f1_eq16` is the paper's Eq. 16 F1 over positive entries (what its
  RFMiD table reports; the script's F1 above is accuracy).
* :func:`multilabel_report` is the per-class long-tail view (AUC, AP, F1) with
  head/medium/tail means.
* :func:`mean_metric` / :func:`merge_metrics` / :func:`finalize_metrics` carry
  training metrics as ``(sum, count)`` pairs so that means over devices and
  steps are exact.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from sklearn import metrics as skm

ODIR_CLASSES = ("N", "D", "G", "C", "A", "H", "M", "O")


def _as_2d(name: str, x) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim != 2:
    raise ValueError(f"`{name}` must be [n, C], got shape {x.shape}.")
  return x


def _check_pair(labels, probs) -> tuple[np.ndarray, np.ndarray]:
  labels, probs = _as_2d("labels", labels), _as_2d("probs", probs)
  if labels.shape != probs.shape:
    raise ValueError(
      f"`labels` has shape {labels.shape} but `probs` has shape "
      f"{probs.shape}."
    )
  if not np.all(np.isfinite(probs)):
    raise ValueError("`probs` contains non-finite values.")
  return labels.astype(np.int64), probs.astype(np.float64)


def odir_score(labels, probs) -> dict[str, float]:
  r"""The official ODIR-2019 score on `[n, 8]` labels and probabilities.

  Exactly as the challenge's ``ODIR_evaluation.py``: both matrices are
  flattened to one vector of :math:`8n` binary decisions;

  * ``kappa`` = Cohen's kappa of ``labels`` vs ``probs > 0.5`` (strict: a
    probability of exactly 0.5 is a negative),
  * ``f1`` = sklearn's ``f1_score(..., average="micro")`` of the same. On one
    flattened binary column that is accuracy over all :math:`8n` decisions,
    negatives included; it is **not** the paper's Eq. 16 F1 over positive
    entries (:func:`f1_eq16`),
  * ``auc`` = one ROC AUC pooled over all :math:`8n` entries (not a per-class
    mean),
  * ``final`` = (kappa + f1 + auc) / 3.

  The challenge scores one row per patient; the AGT paper applies the same
  formula to image-level rows. Works for any number of columns. The paper's
  ODIR-5K F1 (0.87-0.97 in its Table 1) can only be this accuracy-like F1;
  its RFMiD F1 (0.56-0.68, Table 2) can only be Eq. 16's
  (docs/metrics.md).

  Args:
    labels: `[n, C]` 0/1 ground truth.
    probs: `[n, C]` predicted probabilities.

  Returns:
    ``{"kappa", "f1", "auc", "final"}`` as floats.

  References:
    ODIR-2019 challenge evaluation script ``ODIR_evaluation.py``
    (https://odir2019.grand-challenge.org). The AGT paper's Eqs. 15-17 state
    kappa, F1 and AUC in per-class terms; the script above is what ODIR
    scores are computed with.
  """
  labels, probs = _check_pair(labels, probs)
  gt, pr = labels.ravel(), probs.ravel()
  pred = (pr > 0.5).astype(np.int64)
  kappa = float(skm.cohen_kappa_score(gt, pred))
  f1 = float(skm.f1_score(gt, pred, average="micro"))
  auc = float(skm.roc_auc_score(gt, pr))
  return {"kappa": kappa, "f1": f1, "auc": auc, "final": (kappa + f1 + auc) / 3}


def f1_eq16(labels, probs, *, threshold: float = 0.5) -> float:
  r"""The AGT paper's Eq. 16 F1, pooled over every (image, class) entry.

  .. math:: F_1 = \frac{2\,TP}{2\,TP + FP + FN}

  with TP, FP and FN counted over all :math:`n \times C` entries at
  ``probs > threshold`` (strict, as the ODIR metric). True negatives do not
  enter, unlike the script's micro-F1 of a flattened column
  (:func:`odir_score`), which is accuracy. With no positive label and no
  positive call the F1 is 0 (nothing was found).

  References:
    The AGT paper, Eq. 16; sklearn's ``f1_score(average="micro")`` on the
    ``[n, C]`` indicator matrices gives the same number.
  """
  labels, probs = _check_pair(labels, probs)
  pred = probs > threshold
  pos = labels.astype(bool)
  tp = int(np.sum(pred & pos))
  fp = int(np.sum(pred & ~pos))
  fn = int(np.sum(~pred & pos))
  return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def reliability_bins(labels, probs, *, bins: int = 10):
  """Equal-width confidence bins over ``[0, 1]`` of one class (or any
  pooled vector): ``(mean p, share positive, count)`` per bin, NaN where
  empty. The last bin includes 1."""
  y = np.asarray(labels, np.float64).ravel()
  p = np.asarray(probs, np.float64).ravel()
  which = np.minimum((p * bins).astype(np.int64), bins - 1)
  count = np.bincount(which, minlength=bins).astype(np.float64)
  with np.errstate(invalid="ignore"):
    conf = np.bincount(which, p, minlength=bins) / count
    acc = np.bincount(which, y, minlength=bins) / count
  return conf, acc, count.astype(np.int64)


def calibration_error(labels, probs, *, bins: int = 15) -> dict:
  r"""Expected calibration error of multi-label probabilities.

  .. math:: \mathrm{ECE} = \sum_b \frac{n_b}{n}\,
    \big|\bar y_b - \bar p_b\big|

  over ``bins`` equal-width bins of :math:`p` (:func:`reliability_bins`):
  per class (each column a binary problem) and pooled over all entries.

  Returns:
    ``{"per_class": [C] floats, "pooled": float, "bins": bins}``.

  References:
    Guo et al., *On calibration of modern neural networks*, ICML 2017.
  """
  labels, probs = _check_pair(labels, probs)

  def ece(y, p):
    conf, acc, count = reliability_bins(y, p, bins=bins)
    keep = count > 0
    return float(
      np.sum(count[keep] * np.abs(acc[keep] - conf[keep])) / count.sum()
    )

  return {
    "per_class": [
      ece(labels[:, j], probs[:, j]) for j in range(labels.shape[1])
    ],
    "pooled": ece(labels, probs),
    "bins": bins,
  }


def exact_match_by_label_count(
  labels, probs, *, threshold: float = 0.5
) -> dict[str, dict]:
  """Sample-level exact match (§5.2) by the number of labels an image has.

  An image counts as correct only if its whole row of calls at ``probs >
  threshold`` (strict) equals its labels. Returns ``{"k": {"images": n,
  "exact": share}}`` for each label count ``k`` present (``"0"`` for images
  without a positive), and ``"all"``.
  """
  labels, probs = _check_pair(labels, probs)
  hit = np.all((probs > threshold) == labels.astype(bool), axis=1)
  k = labels.sum(1)
  out = {
    str(int(n)): {
      "images": int((k == n).sum()),
      "exact": float(hit[k == n].mean()),
    }
    for n in np.unique(k)
  }
  out["all"] = {"images": int(len(k)), "exact": float(hit.mean())}
  return out


def shot_split(
  class_counts, *, many: int = 100, few: int = 20
) -> dict[str, np.ndarray]:
  """Class indices of the head (> many), medium ([few, many]) and tail (< few)
  splits, the CIFAR100-LT convention (Liu et al. 2019)."""
  n = np.asarray(class_counts)
  return {
    "head": np.flatnonzero(n > many),
    "medium": np.flatnonzero((n >= few) & (n <= many)),
    "tail": np.flatnonzero(n < few),
  }


def top1_report(
  labels, scores, class_counts, *, many: int = 100, few: int = 20
) -> dict[str, float]:
  """Single-label top-1 accuracy, overall and on the many (> ``many``
  training images), medium and few (< ``few``) classes, each tier averaged
  over its test images (the balanced CIFAR100-LT test set makes that the
  mean per-class accuracy). A tier without classes is NaN.

  Args:
    labels: ``[N, C]`` one-hot or ``[N]`` class ids.
    scores: ``[N, C]`` any scores whose argmax is the prediction.
    class_counts: ``[C]`` training images per class.
  """
  scores = np.asarray(scores)
  y = np.asarray(labels)
  y = y.argmax(1) if y.ndim == 2 else y
  hit = scores.argmax(1) == y
  tiers = shot_split(class_counts, many=many, few=few)
  out = {"all": float(hit.mean())}
  for name, key in (("many", "head"), ("medium", "medium"), ("few", "tail")):
    rows = np.isin(y, tiers[key])
    out[name] = float(hit[rows].mean()) if rows.any() else float("nan")
  return out


def macro_f1(labels, probs, *, threshold: float = 0.5) -> float:
  """Mean over classes of F1 at ``probs > threshold`` (strict, as the ODIR
  metric); a class with no positive and no predicted positive scores 0.
  Paper 001 selects checkpoints by this on the validation split."""
  labels, probs = _check_pair(labels, probs)
  return float(
    skm.f1_score(
      labels,
      (probs > threshold).astype(np.int64),
      average="macro",
      zero_division=0.0,
    )
  )


def multilabel_report(
  labels,
  probs,
  class_names: Sequence[str],
  *,
  class_counts=None,
  many: int = 100,
  few: int = 20,
) -> dict:
  """Per-class and averaged multi-label metrics.

  Per class: ROC AUC, average precision (AP), and precision, recall and F1
  at the strict 0.5 threshold, the number of test positives, the share of
  images called positive (``called_positive``) and the mean probability on
  the class's negatives (``p_neg``). A class with no positive (or
  no negative) in ``labels`` has undefined AUC/AP, reported as NaN and left
  out of the macro means, whose ``*_classes`` field says how many classes
  entered.

  With ``class_counts`` (training positives per class) the report adds the
  mean AUC/AP/F1 over the head (> ``many``), medium and tail (< ``few``)
  splits.

  Args:
    labels: `[n, C]` 0/1 ground truth.
    probs: `[n, C]` probabilities.
    class_names: `C` names.
    class_counts: optional `[C]` training counts for the shot splits.
    many, few: split thresholds.

  Returns:
    A JSON-serialisable dict: ``per_class`` (name -> metrics), ``macro_auc``,
    ``map``, ``macro_f1``, ``f1_eq16`` (:func:`f1_eq16`), ``exact_match``
    (:func:`exact_match_by_label_count`), ``ece`` (pooled
    :func:`calibration_error`; each class's in ``per_class``),
    ``macro_precision``, ``macro_recall``, ``odir`` (:func:`odir_score`) and,
    with counts,
    ``shots``.
  """
  labels, probs = _check_pair(labels, probs)
  c = labels.shape[1]
  if len(class_names) != c:
    raise ValueError(
      f"`class_names` has {len(class_names)} names for {c} " "columns."
    )
  pred = (probs > 0.5).astype(np.int64)
  # Every class's precision, recall and F1 in one call (per class, the
  # binary scores of its column; one call instead of three per class).
  if c == 1:  # a binary target to sklearn, scored per label value: take 1's
    y_true, y_pred, which = labels[:, 0], pred[:, 0], [1]
  else:
    y_true, y_pred, which = labels, pred, None
  precision, recall, f1_all, _ = skm.precision_recall_fscore_support(
    y_true, y_pred, labels=which, average=None, zero_division=0.0
  )
  per_class, aucs, aps, f1s = {}, [], [], []
  for j, name in enumerate(class_names):
    y, p = labels[:, j], probs[:, j]
    defined = 0 < y.sum() < len(y)
    auc = float(skm.roc_auc_score(y, p)) if defined else math.nan
    ap = float(skm.average_precision_score(y, p)) if defined else math.nan
    f1 = float(f1_all[j])
    per_class[name] = {
      "auc": auc,
      "ap": ap,
      "f1": f1,
      "precision": float(precision[j]),
      "recall": float(recall[j]),
      "positives": int(y.sum()),
      # calibration at the strict threshold: the share of images called
      # positive and the mean probability on the class's negatives
      "called_positive": float(pred[:, j].mean()),
      "p_neg": float(p[y == 0].mean()) if (y == 0).any() else math.nan,
      "ece": calibration_error(y[:, None], p[:, None])["pooled"],
    }
    aucs.append(auc), aps.append(ap), f1s.append(f1)
  aucs, aps, f1s = map(np.asarray, (aucs, aps, f1s))

  def nanmean(x):
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else math.nan

  report = {
    "per_class": per_class,
    "macro_auc": nanmean(aucs),
    "map": nanmean(aps),
    "macro_f1": float(f1s.mean()),
    "f1_eq16": f1_eq16(labels, probs),
    "exact_match": exact_match_by_label_count(labels, probs),
    "ece": calibration_error(labels, probs)["pooled"],
    "macro_precision": float(
      np.mean([v["precision"] for v in per_class.values()])
    ),
    "macro_recall": float(np.mean([v["recall"] for v in per_class.values()])),
    "macro_auc_classes": int(np.isfinite(aucs).sum()),
    "odir": odir_score(labels, probs),
  }
  if class_counts is not None:
    if len(class_counts) != c:
      raise ValueError(
        f"`class_counts` has {len(class_counts)} entries for " f"{c} classes."
      )
    report["shots"] = {
      split: {
        "classes": [class_names[j] for j in idx],
        "auc": nanmean(aucs[idx]),
        "ap": nanmean(aps[idx]),
        "f1": nanmean(f1s[idx]),
      }
      for split, idx in shot_split(class_counts, many=many, few=few).items()
    }
  return report


# -- (sum, count) training metrics -------------------------------------------


def mean_metric(values, where=None) -> tuple:
  """A ``(sum, count)`` pair for averaging ``values`` (jnp or np) exactly."""
  import jax.numpy as jnp  # keeps this module importable without jax on host

  values = jnp.asarray(values)
  if where is None:
    return jnp.sum(values), jnp.asarray(values.size, values.dtype)
  where = jnp.broadcast_to(jnp.asarray(where), values.shape)
  return (
    jnp.sum(jnp.where(where, values, 0)),
    jnp.sum(where).astype(values.dtype),
  )


def merge_metrics(a: Mapping, b: Mapping) -> dict:
  """Adds two dicts of ``(sum, count)`` pairs key by key."""
  out = dict(a)
  for k, (s, n) in b.items():
    out[k] = (out[k][0] + s, out[k][1] + n) if k in out else (s, n)
  return out


def finalize_metrics(metrics: Mapping) -> dict[str, float]:
  """``{name: sum / count}`` on the host (NaN for an empty count)."""
  out = {}
  for k, (s, n) in metrics.items():
    s, n = float(np.asarray(s)), float(np.asarray(n))
    out[k] = s / n if n else math.nan
  return out
