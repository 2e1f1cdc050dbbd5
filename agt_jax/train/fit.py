"""What every trainer shares: one phase trained with validation scoring and
selection, and the :class:`Trained` model it returns."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from agt_jax.train import evaluation, interrupts
from agt_jax.train.phase import TrainingPhase
from agt_jax.train.selection import ValidationScorer


@dataclasses.dataclass
class Trained:
  """A trained phase's model: selected and last variables, and how the
  selection went."""

  model: Any
  predict_fn: Any
  selected: dict
  last: dict
  selection: dict
  throughput: dict
  offset: Any = None  # `[C]` post-hoc prior correction (logits)


def _select(scorer, last, config, total_steps) -> tuple[dict, dict]:
  """``(selected variables, selection record)``: the validation-best ones
  (``select=best``), else the last; with the validation probabilities of
  both when a validation split is scored."""
  selection: dict[str, Any] = {"select": "last", "step": total_steps}
  selected = last
  if scorer is None:
    return selected, selection
  if config.select == "best" and scorer.best_step is not None:
    selected = scorer.best_variables(last)
    metric = (
      "ODIR final score"
      if config.select_metric == "final"
      else "macro F1 at 0.5"
    )
    selection = {
      "select": f"best validation {metric}",
      "step": int(scorer.best_step),
    }
  selection["val_probs"] = scorer.probs(selected)
  selection["val_probs_last"] = (
    selection["val_probs"] if selected is last else scorer.probs(last)
  )
  return selected, selection


def run_phase(
  name,
  *,
  model,
  step_fn,
  state,
  batches,
  config,
  data,
  mesh,
  workdir,
  resume,
  total_steps,
  extra_args=(),
  offset=None,
  prepare=None,
) -> Trained:
  """Trains one phase with validation scoring and returns its model.

  ``offset``: `[C]` logits subtracted at prediction (post-hoc prior
  correction); ``prepare``: ``variables -> variables`` applied before any
  scoring (batch-norm recalibration), so the selected and last variables
  are the prepared ones.
  """
  fn = evaluation.predictor(model, offset)
  scorer = None
  if len(data.val_idx) and config.eval_every > 0:
    scorer = ValidationScorer(
      name,
      model,
      fn,
      data.source,
      data.val_idx,
      data.y_val,
      config,
      mesh,
      workdir / "checkpoints" / f"{name}_best",
      prepare=prepare,
    )
  try:
    phase = TrainingPhase(
      name,
      step_fn=step_fn,
      state=state,
      batches=batches,
      source=data.fit_source,
      config=config,
      workdir=workdir,
      mesh=mesh,
      total_steps=total_steps,
      resume=resume,
      extra_args=extra_args,
      evaluate=scorer,
    )
    throughput = {name: phase.run()}
    interrupts.set_stage(
      f"after the {name} (checkpointed), while scoring its validation split"
    )
    last = phase.variables()
    if prepare is not None:
      last = prepare(last)
    selected, selection = _select(scorer, last, config, total_steps)
  finally:
    if scorer is not None:
      scorer.close()
  return Trained(
    model,
    fn,
    selected,
    last,
    selection,
    throughput,
    None if offset is None else np.asarray(offset, np.float32),
  )
