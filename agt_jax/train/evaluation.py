"""Evaluation of a trained model: eval-mode predictions over a split, the
metric report, thresholds tuned on validation, and the collapse check."""

from __future__ import annotations

import functools

import jax
import numpy as np

from agt_jax import distributed
from agt_jax import grouping as grouping_lib
from agt_jax import metrics as metrics_lib
from agt_jax.data import images as images_lib
from agt_jax.data import pipeline
from agt_jax.runtime import progress, replicate
from agt_jax.train import steps


def predictor(model, offset=None, *, tta="none", temperature=None):
  """The jitted eval-mode ``(variables, images) -> (probs, features)``; build
  it once per model and pass it to every :func:`predict` of that model.
  ``offset`` (`[C]` logits) is subtracted before the sigmoid (the post-hoc
  prior correction of an AGT teacher), ``temperature`` divides the logits,
  and ``tta`` names the test-time views averaged
  (:data:`~agt_jax.train.steps.TTA_VIEWS`)."""
  off, temp = (
    None if a is None else jax.numpy.asarray(a, "float32")
    for a in (offset, temperature)
  )
  fn = steps.bind_static(_predict, steps.predict_step, model=model, tta=tta)
  return functools.partial(fn, offset=off, temperature=temp)


# One program per model, views and shapes for the whole process: a jit
# built per call (a closure over the offset and temperature) was traced and
# compiled again at every evaluation of a run and for every run.
_predict = jax.jit(steps.predict_step, static_argnames=("model", "tta"))


def predict(
  model, variables, source, indices, labels, config, mesh, desc, fn=None
) -> tuple[np.ndarray, np.ndarray]:
  """Eval-mode probabilities and features for ``indices`` (centre crops).

  Each process decodes its rows of every batch; the predictions are
  gathered, so every process returns all of them.
  """
  batches = pipeline.eval_batches(
    len(indices), labels, batch_size=config.eval_batch_size
  )
  ds = pipeline.with_images(
    pipeline.host_batches(batches),
    images_lib.SubsetSource(source, indices),
    crop=config.crop,
    train=False,
  )
  fn = fn or predictor(model)
  variables = replicate(variables, mesh)
  sharding = pipeline.data_sharding(mesh)
  probs, feats = [], []
  bar = progress(len(ds), 0, desc) if desc else None
  for t in range(len(ds)):
    x = pipeline.global_batch({"image": ds[t]["image"]}, sharding)["image"]
    p, f = fn(variables, x)
    keep = batches[t]["valid"]  # the global batch's padding mask
    probs.append(distributed.to_host(p)[keep])
    feats.append(distributed.to_host(f)[keep])
    if bar is not None:
      bar.update(1)
  if bar is not None:
    bar.close()
  return np.concatenate(probs), np.concatenate(feats)


def report(probs, labels, class_names, train_counts) -> dict:
  """:func:`agt_jax.metrics.multilabel_report` with shot tiers from the
  training counts."""
  tiers = grouping_lib.shot_groups(train_counts)
  counts = np.asarray(train_counts)
  many = int(counts[list(tiers[0])].min()) - 1 if len(tiers) == 3 else 100
  few = int(counts[list(tiers[1])].min()) if len(tiers) == 3 else 20
  return metrics_lib.multilabel_report(
    labels, probs, list(class_names), class_counts=counts, many=many, few=few
  )


def tune_thresholds(labels, probs) -> np.ndarray:
  """`[C]` per-class thresholds maximising each class's F1 on ``labels``.

  Candidates are the observed probabilities; a class without a positive (or
  without a negative) keeps 0.5. Tune on validation, apply to test.
  """
  labels, probs = np.asarray(labels) > 0, np.asarray(probs, np.float64)
  out = np.full(labels.shape[1], 0.5)
  for j in range(labels.shape[1]):
    y, p = labels[:, j], probs[:, j]
    if not 0 < y.sum() < len(y):
      continue
    order = np.argsort(-p, kind="stable")
    tp = np.cumsum(y[order])
    k = np.arange(1, len(p) + 1)
    f1 = 2 * tp / (k + y.sum())
    # A threshold between the best cut and the next probability below it.
    best = int(np.argmax(f1))
    nxt = p[order[best + 1]] if best + 1 < len(p) else 0.0
    out[j] = (p[order[best]] + nxt) / 2
  return out


GLOBAL_THRESHOLDS = np.round(np.arange(0.02, 0.99, 0.01), 2)


def tune_global_threshold(labels, probs) -> float:
  """The one threshold (a grid of 0.02-0.98 in steps of 0.01) maximising
  the ODIR kappa (flattened, as the official script) on ``labels``; ties
  go to the threshold nearest 0.5. The same rule for every method: tune on
  validation, apply to test."""
  from sklearn.metrics import cohen_kappa_score

  gt = (np.asarray(labels) > 0).ravel()
  pr = np.asarray(probs, np.float64).ravel()
  best, best_t = -np.inf, 0.5
  for t in sorted(GLOBAL_THRESHOLDS, key=lambda t: (abs(t - 0.5), t)):
    k = cohen_kappa_score(gt, pr > t)
    if k > best + 1e-12:
      best, best_t = k, float(t)
  return best_t


def global_threshold_score(labels, probs, threshold: float) -> dict:
  """The ODIR score with every probability thresholded at ``threshold``
  (AUC unchanged), and the threshold."""
  return {
    **tuned_score(labels, probs, np.full(np.shape(probs)[1], threshold)),
    "threshold": float(threshold),
  }


def temperature_scaling(y_val, p_val, y_test, p_test) -> tuple[dict, dict]:
  """``(temperatures, test scores)``: one shared and per-class temperatures
  fitted on validation (:mod:`agt_jax.calibration`), and for each the test
  fold's pooled ECE and strict ODIR score after scaling."""
  from agt_jax import calibration

  temps = {
    "shared": calibration.fit_temperature(y_val, p_val),
    "per_class": [
      float(t)
      for t in calibration.fit_temperature(y_val, p_val, per_class=True)
    ],
  }
  scores = {}
  for kind, t in temps.items():
    q = calibration.apply_temperature(p_test, t)
    scores[kind] = {
      "ece": metrics_lib.calibration_error(y_test, q)["pooled"],
      "odir": metrics_lib.odir_score(y_test, q),
    }
  return temps, scores


def tuned_score(labels, probs, thresholds) -> dict:
  """The ODIR score (and macro F1) with per-class thresholds (the AUC is
  unchanged)."""
  labels, probs = np.asarray(labels), np.asarray(probs, np.float64)
  # odir_score thresholds at > 0.5: shift each column so its threshold
  # lands there, preserving the order of probabilities within a class.
  shifted = np.clip(probs - np.asarray(thresholds)[None] + 0.5, 0.0, 1.0)
  out = metrics_lib.odir_score(labels, shifted)
  out["auc"] = metrics_lib.odir_score(labels, probs)["auc"]
  out["final"] = (out["kappa"] + out["f1"] + out["auc"]) / 3
  out["macro_f1"] = metrics_lib.macro_f1(labels, shifted)
  return out


def negative_probabilities(labels, probs) -> np.ndarray:
  """`[C]` mean predicted probability on each class's negatives (NaN for a
  class without negatives)."""
  labels, probs = np.asarray(labels) > 0, np.asarray(probs, np.float64)
  neg = ~labels
  with np.errstate(invalid="ignore"):
    return np.where(neg.any(0), (probs * neg).sum(0) / neg.sum(0), np.nan)


def collapse_message(
  p_neg, class_names, model: str, config, split: str
) -> str | None:
  """One sentence when more than half of the classes have mean p > 0.5 on
  their negatives (the model calls nearly everything positive), else None."""
  p_neg = np.asarray(p_neg, np.float64)
  bad = [c for c, v in zip(class_names, p_neg) if np.isfinite(v) and v > 0.5]
  if len(bad) * 2 <= len(class_names):
    return None
  from agt_jax import methods

  rw_cause = None
  if model == "teacher" and methods.TEACHER_LOSSES[config.loss].reweightable:
    rw_cause = methods.REWEIGHTS[config.reweight].collapse_cause(config)
  if rw_cause:
    cause = rw_cause
  elif model == "student":
    cause = (
      "the student distils a collapsed teacher or trains too "
      "briefly; check the teacher's warning, or raise "
      "--set student_steps=N"
    )
  else:
    cause = "the learning rate may be too high; try a smaller --set lr=X"
  return (
    f"The {model} collapsed: {len(bad)} of {len(class_names)} classes "
    f"({', '.join(bad)}) have mean p > 0.5 on their negatives "
    f"({split}), so it calls nearly every image positive; likely "
    f"cause: {cause}."
  )
