"""Model selection on a validation split carved from the training fold.

The test fold is never looked at during training: every ``eval_every`` steps
the phase's model is scored on the validation split, and the variables with
the best validation ODIR final score (or macro F1 at 0.5,
``select_metric="macro_f1"``, paper 001's rule) are kept in their own
checkpoint.
"""

from __future__ import annotations

import numpy as np

from agt_jax import metrics as metrics_lib
from agt_jax.train import evaluation
from agt_jax.train.checkpoint import BestCheckpoint


class ValidationScorer:
  """``(state, step) -> record``: scores the model on the validation split
  and keeps the best variables (by ``config.select_metric``: the ODIR final
  score or macro F1 at 0.5, its ties broken by the ODIR final score; ties
  keep the earlier).

  Records carry the ODIR score, per-class AP and the mean probability on
  negatives (``p_neg``), plus top-1 figures on single-label data; they go to
  ``metrics.jsonl`` as ``phase = "eval_<name>"``.
  """

  def __init__(
    self,
    name,
    model,
    fn,
    source,
    val_idx,
    y_val,
    config,
    mesh,
    directory,
    prepare=None,
  ):
    self.name, self.model, self.fn = name, model, fn
    # variables -> variables before scoring (batch-norm recalibration); the
    # kept best variables are the prepared ones.
    self.prepare = prepare
    self.source, self.val_idx, self.y_val = source, val_idx, y_val
    self.config, self.mesh = config, mesh
    self.best = BestCheckpoint(directory)
    meta = self.best.meta()
    self.best_step = meta["step"] if meta else None
    self.metric = getattr(config, "select_metric", "final")
    self.best_final = meta.get("value", meta["final"]) if meta else -np.inf
    self.best_key = (
      tuple(meta.get("key", [self.best_final])) if meta else (-np.inf,)
    )
    self.single_label = bool(np.all(y_val.sum(1) == 1))

  def probs(self, variables) -> np.ndarray:
    return evaluation.predict(
      self.model,
      variables,
      self.source,
      self.val_idx,
      self.y_val,
      self.config,
      self.mesh,
      None,
      fn=self.fn,
    )[0]

  def __call__(self, state, step) -> dict:
    from sklearn.metrics import average_precision_score

    variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
    if self.prepare is not None:
      variables = self.prepare(variables)
    probs = self.probs(variables)
    y = self.y_val
    score = metrics_lib.odir_score(y, probs)
    # None (JSON null) where a class has no validation positive.
    ap = [
      float(average_precision_score(y[:, c], probs[:, c]))
      if 0 < y[:, c].sum() < len(y)
      else None
      for c in range(y.shape[1])
    ]
    rec = {
      "phase": f"eval_{self.name}",
      "split": "validation",
      "step": step,
      **score,
      "ap": ap,
      "map": float(np.nanmean(np.array(ap, dtype=float))),
      "p_neg": evaluation.negative_probabilities(y, probs).tolist(),
    }
    if self.single_label:
      hit = probs.argmax(1) == y.argmax(1)
      rec["top1_per_class"] = [
        float(hit[y[:, c] > 0].mean()) if y[:, c].any() else None
        for c in range(y.shape[1])
      ]
      rec["top1"] = float(hit.mean())
    rec["macro_f1"] = metrics_lib.macro_f1(y, probs)
    # macro F1 at 0.5 is often flat (0 while no rare class crosses 0.5):
    # ties go to the better ODIR final score, then to the earlier step.
    key = (
      (score["final"],)
      if self.metric == "final"
      else (rec["macro_f1"], score["final"])
    )
    if key > self.best_key:
      self.best_key, self.best_final, self.best_step = key, key[0], step
      self.best.save(
        step,
        variables,
        {"step": step, "value": key[0], "key": list(key), **score},
      )
    rec["best_step"], rec["best_final"] = self.best_step, self.best_final
    rec["select_metric"] = self.metric
    return rec

  def best_variables(self, like) -> dict:
    return self.best.restore(like)

  def close(self) -> None:
    self.best.close()
