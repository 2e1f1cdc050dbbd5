"""Equalization Loss v2 with its gradient statistics carried explicitly."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from agt_jax.losses import _checks


class EQLv2State(NamedTuple):
  """Cumulative per-class gradient magnitudes (never reset or decayed).

  Attributes:
    pos_grad: `[C]` sum of weighted positive-gradient magnitudes so far.
    neg_grad: `[C]` sum of weighted negative-gradient magnitudes so far.
    pos_neg: `[C]` ``pos_grad / (neg_grad + 1e-10)``; starts at 100 so every
      weight is 1 at the first step, as the reference's "no statistics yet".
  """

  pos_grad: jax.Array
  neg_grad: jax.Array
  pos_neg: jax.Array


def eqlv2_init(num_classes: int, *, dtype=jnp.float32) -> EQLv2State:
  r"""Fresh EQLv2 statistics for `num_classes` sigmoid outputs.

  .. math::
    g^{pos} = g^{neg} = 0, \qquad g^{pos}/g^{neg} := 100

  so that :math:`q = \sigma(\gamma(100 - \mu)) \approx 1` and every weight is
  1 at the first step.

  Args:
    num_classes: :math:`C`.
    dtype: statistics dtype.

  Returns:
    :class:`EQLv2State` with `[C]` fields.

  References:
    Tan et al., *Equalization Loss v2*, CVPR 2021.
  """
  # Separate buffers: a donated train state must not alias two leaves.
  return EQLv2State(
    pos_grad=jnp.zeros((num_classes,), dtype),
    neg_grad=jnp.zeros((num_classes,), dtype),
    pos_neg=jnp.full((num_classes,), 100.0, dtype),
  )


def eqlv2_loss(
  logits: ArrayLike,
  labels: ArrayLike,
  state: EQLv2State,
  *,
  gamma: float = 12.0,
  mu: float = 0.8,
  alpha: float = 4.0,
  where: ArrayLike | None = None,
  axis_name: str | None = None,
) -> tuple[jax.Array, EQLv2State]:
  r"""EQLv2 weighted BCE per element, and the updated statistics.

  Weights come from the statistics **before** this step:

  .. math::
    q_j = \frac{1}{1 + e^{-\gamma(g^{pos}_j / g^{neg}_j - \mu)}}, \quad
    w^{neg}_j = q_j, \quad w^{pos}_j = 1 + \alpha (1 - q_j)

  and :math:`\ell_{ij} = (w^{pos}_j y_{ij} + w^{neg}_j (1 - y_{ij}))
  \mathrm{BCE}(z_{ij}, y_{ij})`. The reference loss is
  ``loss.sum() / N`` (sum over classes, mean over samples). After the loss,
  the weighted gradient magnitudes :math:`|y(p-1) + (1-y)p| \cdot w` are added
  to the statistics (summed over the batch, ``psum``-ed over ``axis_name``
  when sharded, as the reference all-reduces across GPUs). Weights are
  constants for autodiff.

  This is the multi-label adaptation: every channel is a class with a
  multi-hot target (the reference is single-label detection with a background
  channel that is excluded from the statistics).

  Args:
    logits: `[N, C]` floating.
    labels: `[N, C]` multi-hot labels.
    state: :class:`EQLv2State` from :func:`eqlv2_init` or the previous step.
    gamma, mu, alpha: mapping hyperparameters (reference defaults 12, 0.8, 4).
    where: optional `[N]` or `[N, C]` mask; masked elements give 0 loss and do
      not enter the statistics.
    axis_name: mesh axis to all-reduce the statistics inside ``shard_map``.

  Returns:
    ``(per_element [N, C], new_state)``.

  References:
    Tan et al., *Equalization Loss v2*, CVPR 2021.
  """
  _checks.check_logits_labels(logits, labels)
  _checks.check_where(where, logits)
  logits = jnp.asarray(logits)
  c = logits.shape[1]
  for name, v in zip(EQLv2State._fields, state):
    _checks.check_class_vector(v, f"state.{name}", c)
  y = jnp.asarray(labels).astype(logits.dtype)
  mask = _checks.where_2d(where, logits)
  q = jax.nn.sigmoid(gamma * (state.pos_neg - mu))
  neg_w = q.astype(logits.dtype)
  pos_w = 1.0 + alpha * (1.0 - neg_w)
  weight = jax.lax.stop_gradient(pos_w * y + neg_w * (1.0 - y))
  bce = -(
    y * jax.nn.log_sigmoid(logits) + (1.0 - y) * jax.nn.log_sigmoid(-logits)
  )
  loss = jnp.where(mask > 0, bce * weight, 0.0)

  p = jax.lax.stop_gradient(jax.nn.sigmoid(logits))
  grad = jnp.abs(y * (p - 1.0) + (1.0 - y) * p) * weight * mask
  pos_grad = jnp.sum(grad * y, axis=0).astype(state.pos_grad.dtype)
  neg_grad = jnp.sum(grad * (1.0 - y), axis=0).astype(state.neg_grad.dtype)
  if axis_name is not None:
    pos_grad, neg_grad = jax.lax.psum((pos_grad, neg_grad), axis_name)
  pos_grad = state.pos_grad + pos_grad
  neg_grad = state.neg_grad + neg_grad
  new_state = EQLv2State(
    pos_grad=pos_grad, neg_grad=neg_grad, pos_neg=pos_grad / (neg_grad + 1e-10)
  )
  return loss, new_state
