"""Influence-balanced loss (Park et al.), adapted to multi-label sigmoids."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from agt_jax.losses import _checks


def influence_balanced_weights(class_counts: ArrayLike) -> jax.Array:
  r"""IB class weights :math:`\lambda_c \propto 1/n_c`, normalised to sum `C`.

  Args:
    class_counts: `[C]` training examples per class.

  Returns:
    `[C]` weights.

  References:
    Park et al., *Influence-Balanced Loss for Imbalanced Visual
    Classification*, ICCV 2021.
  """
  inv = 1.0 / jnp.maximum(jnp.asarray(class_counts, jnp.float32), 1.0)
  return inv * (inv.shape[0] / jnp.sum(inv))


def influence_balanced_loss(
  logits: ArrayLike,
  labels: ArrayLike,
  features: ArrayLike,
  class_counts: ArrayLike,
  *,
  alpha: float = 1000.0,
  epsilon: float = 1e-3,
  where: ArrayLike | None = None,
) -> jax.Array:
  r"""Influence-balanced BCE per element (multi-label adaptation).

  The reference (single-label softmax) scales each sample's class-weighted CE
  by the inverse of its influence, the L1 norm of the loss gradient w.r.t. the
  last layer's weights, :math:`\|p - y\|_1 \cdot \|h\|_1`. With sigmoid outputs
  the same gradient is :math:`(\sigma(z) - y)\, h^\top`, so

  .. math::
    \mathrm{IB}_i = \frac{\alpha}{\sum_j |\sigma(z_{ij}) - y_{ij}|
        \cdot \sum_d |h_{id}| + \epsilon}, \qquad
    \ell_{ij} = \mathrm{IB}_i \, v_{ij} \, \mathrm{BCE}(z_{ij}, y_{ij}),

  with :math:`v_{ij} = \lambda_j` on positive terms and 1 on negative terms
  (:func:`influence_balanced_weights`; in the reference the class weight is
  that of the sample's target class, so here it follows the positive
  labels). As in the reference, the influence factor is **not**
  gradient-stopped. Reduce with ``.sum(-1).mean()`` (the reference's
  ``mean`` over samples of the per-sample loss). The reference trains with
  plain CE first and switches to IB halfway (``ib_start`` in the config).

  Args:
    logits: `[N, C]` floating.
    labels: `[N, C]` multi-hot labels.
    features: `[N, D]` inputs of the last linear layer.
    class_counts: `[C]` training examples per class.
    alpha: numerator (reference: 1000).
    epsilon: stabiliser (reference: 1e-3).
    where: optional `[N]` or `[N, C]` mask; masked elements give 0.

  Returns:
    `[N, C]` per-element loss.

  References:
    Park et al., *Influence-Balanced Loss for Imbalanced Visual
    Classification*, ICCV 2021.
  """
  _checks.check_logits_labels(logits, labels)
  _checks.check_where(where, logits)
  _checks.check_floating(features, "features")
  _checks.check_rank(features, 2, "features", "[N, D]")
  z = jnp.asarray(logits)
  if jnp.shape(features)[0] != z.shape[0]:
    raise ValueError(
      f"`features` has {jnp.shape(features)[0]} rows but "
      f"`logits` has {z.shape[0]}."
    )
  _checks.check_class_vector(class_counts, "class_counts", z.shape[1])
  y = jnp.asarray(labels).astype(z.dtype)
  h = jnp.asarray(features).astype(z.dtype)
  lam = influence_balanced_weights(class_counts).astype(z.dtype)
  grad_l1 = jnp.sum(jnp.abs(jax.nn.sigmoid(z) - y), axis=-1)
  influence = grad_l1 * jnp.sum(jnp.abs(h), axis=-1)
  ib = alpha / (influence + epsilon)
  bce = -(y * jax.nn.log_sigmoid(z) + (1.0 - y) * jax.nn.log_sigmoid(-z))
  v = y * lam[None, :] + (1.0 - y)
  loss = ib[:, None] * v * bce
  return jnp.where(_checks.where_2d(where, z) > 0, loss, 0.0)
