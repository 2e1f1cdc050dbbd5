"""A stable form of AGT's gradient re-weighting: the paper's mapping fed back.

The paper's rule (:func:`agt_jax.losses.gradient_reweight_weights`) measures
the imbalance of the *unweighted* gradients. For a class with
:math:`P = \\sum_{pos}(1-p)` and :math:`N = \\sum_{neg} p` the bias gradient of
its loss is :math:`-P + wN`, which with :math:`w = \\min(1, (P/N)^\\beta)` is
never positive for :math:`\\beta \\ge 1`: every class drifts to "always
positive" (``docs/reweighting.md``). Here the ratio is measured on the
gradient the model actually feels, the **weighted** negatives :math:`wN`, as
EQLv2 does, with running statistics carried in an explicit state.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from agt_jax.losses import _checks, _reweighting


class FeedbackState(NamedTuple):
  """Running per-class gradient magnitudes of the feedback re-weighting.

  Attributes:
    pos: `[C]` exponential moving average of :math:`\\sum_{pos} (1 - p)`.
    neg: `[C]` exponential moving average of the weighted negative gradient
      :math:`w \\sum_{neg} p`.
    count: `[]` number of updates so far (0: no statistics, every weight 1).
  """

  pos: jax.Array
  neg: jax.Array
  count: jax.Array


def feedback_reweight_init(
  num_classes: int, *, dtype=jnp.float32
) -> FeedbackState:
  """Empty statistics for `num_classes` outputs: every weight starts at 1.

  Args:
    num_classes: :math:`C`.
    dtype: statistics dtype.

  Returns:
    :class:`FeedbackState` with zero `[C]` moving averages and count 0, so
    that :math:`w_j = 1` at the first step.

  References:
    Jian et al., Sci. Rep. 2026, Eqs. 1-3 (the mapping this state feeds);
    Tan et al., *Equalization Loss v2*, CVPR 2021 (carried statistics).
  """
  # Separate buffers: a donated train state must not alias two leaves.
  return FeedbackState(
    pos=jnp.zeros((num_classes,), dtype),
    neg=jnp.zeros((num_classes,), dtype),
    count=jnp.zeros((), jnp.int32),
  )


def feedback_reweight_weights(
  state: FeedbackState, *, beta: float = 2.0, eps: float = 1e-8
) -> jax.Array:
  r"""The `[C]` negative weights that the statistics in ``state`` give.

  .. math::
    r_j = \frac{\bar P_j}{\overline{wN}_j + \epsilon}, \qquad
    w_j = \min(1, r_j^{\beta})

  and :math:`w_j = 1` before the first update. Both averages share one decay,
  so their bias corrections cancel in the ratio and none is applied.

  Args:
    state: :class:`FeedbackState`.
    beta: exponent of the paper's mapping (Eq. 3).
    eps: ratio denominator offset (Eq. 2).

  Returns:
    `[C]` weights in :math:`[0, 1]`, gradient-stopped.

  References:
    Jian et al., *Long-tailed multi-label retinal disease classification
    using alternate group training and gradient-based re-weighting*,
    Sci. Rep. 2026, Eqs. 2-3.
  """
  ratio = state.pos / (state.neg + eps)
  w = jnp.where(
    state.count > 0, _reweighting._ratio_to_weight(ratio, beta), 1.0
  )
  return jax.lax.stop_gradient(w.astype(state.pos.dtype))


def feedback_reweighted_bce(
  logits: ArrayLike,
  labels: ArrayLike,
  state: FeedbackState,
  *,
  beta: float = 2.0,
  decay: float = 0.99,
  eps: float = 1e-8,
  where: ArrayLike | None = None,
  axis_name: str | None = None,
) -> tuple[jax.Array, FeedbackState]:
  r"""Eq. 4's weighted BCE with weights from fed-back gradient statistics.

  Weights come from the statistics **before** this step
  (:func:`feedback_reweight_weights`); then the batch's positive gradient
  magnitude and its **weighted** negative gradient magnitude update the
  running averages:

  .. math::
    \ell_{ij} = -\left[y_{ij}\log p_{ij} + w_j (1-y_{ij})\log(1-p_{ij})
      \right], \\
    \bar P_j \leftarrow d\,\bar P_j + (1-d) \sum_i y_{ij}(1-p_{ij}), \quad
    \overline{wN}_j \leftarrow d\,\overline{wN}_j + (1-d)\, w_j
      \sum_i (1-y_{ij})\, p_{ij}

  Why this learns where the paper's rule runs away: at a steady state
  :math:`w = (P/(wN))^\beta`, i.e. :math:`w = (P/N)^{\beta/(1+\beta)}`, an
  effective exponent below 1, and the bias gradient
  :math:`-P + wN = P^{\beta/(1+\beta)}(N^{1/(1+\beta)} - P^{1/(1+\beta)})` is
  positive whenever :math:`N > P`: raising :math:`p` on negatives is pushed
  back instead of rewarded. Sums run over the **global** batch (``psum`` over
  ``axis_name`` inside ``shard_map``; plain ``jit`` with a batch-sharded input
  is already global). The weights are constants for autodiff.

  The decay ``d = 0.99`` averages over about 100 steps: enough batches that a
  class seen in a few percent of images has positives in the window, short
  enough to follow AGT's alternation between groups. Chosen by reasoning, not
  tuned on any test fold.

  Args:
    logits: `[N, C]` floating logits.
    labels: `[N, C]` multi-hot labels.
    state: :class:`FeedbackState` from :func:`feedback_reweight_init` or the
      previous step.
    beta: exponent of the mapping (paper default 2).
    decay: moving-average decay :math:`d \in [0, 1)`.
    eps: ratio denominator offset.
    where: optional `[N]` or `[N, C]` mask; masked elements give 0 loss and
      do not enter the statistics.
    axis_name: mesh axis to all-reduce the statistics inside ``shard_map``.

  Returns:
    ``(per_element [N, C], new_state)``; ``per_element.sum()`` is Eq. 4.

  References:
    Jian et al., *Long-tailed multi-label retinal disease classification
    using alternate group training and gradient-based re-weighting*,
    Sci. Rep. 2026, Eqs. 1-4 (the mapping); Tan et al., *Equalization Loss
    v2*, CVPR 2021 (statistics of the weighted gradient, carried over steps).
  """
  _checks.check_logits_labels(logits, labels)
  _checks.check_where(where, logits)
  if not 0.0 <= decay < 1.0:
    raise ValueError(f"`decay` must be in [0, 1), got {decay}.")
  logits = jnp.asarray(logits)
  c = logits.shape[1]
  for name in ("pos", "neg"):
    _checks.check_class_vector(getattr(state, name), f"state.{name}", c)
  y = jnp.asarray(labels).astype(logits.dtype)
  mask = _checks.where_2d(where, logits)
  w = feedback_reweight_weights(state, beta=beta, eps=eps)
  loss = _reweighting.reweighted_bce(logits, y, w.astype(logits.dtype))
  loss = jnp.where(mask > 0, loss, 0.0)

  p = jax.lax.stop_gradient(jax.nn.sigmoid(logits)).astype(state.pos.dtype)
  m, yy = mask.astype(p.dtype), y.astype(p.dtype)
  pos = jnp.sum(m * yy * (1.0 - p), axis=0)
  neg = jnp.sum(m * (1.0 - yy) * p, axis=0)
  if axis_name is not None:
    pos, neg = jax.lax.psum((pos, neg), axis_name)
  new_state = FeedbackState(
    pos=decay * state.pos + (1.0 - decay) * pos,
    neg=decay * state.neg + (1.0 - decay) * w * neg,
    count=state.count + 1,
  )
  return loss, new_state
