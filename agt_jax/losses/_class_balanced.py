"""Class-balanced loss based on the effective number of samples (Cui et al.)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from agt_jax.losses import _checks


def class_balanced_weights(
  class_counts: ArrayLike,
  *,
  beta: float = 0.9999,
) -> jax.Array:
  r"""Effective-number class weights, normalised to sum to :math:`C`.

  .. math::
    w_c \propto \frac{1 - \beta}{1 - \beta^{n_c}}, \qquad \sum_c w_c = C

  Args:
    class_counts: `[C]` training positives per class.
    beta: hyperparameter :math:`\beta \in [0, 1)` (default 0.9999).

  Returns:
    `[C]` weights (float32).

  References:
    Cui et al., *Class-Balanced Loss Based on Effective Number of Samples*,
    CVPR 2019.
  """
  n = jnp.asarray(class_counts, jnp.float32)
  _checks.check_rank(n, 1, "class_counts", "[C]")
  if not 0.0 <= beta < 1.0:
    raise ValueError(f"`beta` must be in [0, 1), got {beta}.")
  if beta == 0.0:
    return jnp.ones_like(n)
  # 1 - beta^n = -expm1(n log1p(-(1 - beta))): accurate for beta close to 1,
  # where float32 `1 - beta ** n` loses most of its digits.
  effective = -jnp.expm1(n * jnp.log1p(-(1.0 - beta)))
  w = (1.0 - beta) / effective
  return w / jnp.sum(w) * n.shape[0]


def class_balanced_loss(
  logits: ArrayLike,
  labels: ArrayLike,
  class_counts: ArrayLike,
  *,
  beta: float = 0.9999,
  gamma: float = 0.0,
) -> jax.Array:
  r"""Class-balanced sigmoid (``gamma=0``) or focal loss, per element.

  Follows the official TensorFlow implementation: a **per-sample** weight
  :math:`a_i = \sum_c w_c y_{ic}` (with :math:`w` from
  :func:`class_balanced_weights`) multiplies all :math:`C` terms of the sample,
  negatives included, and the focal modulator has no :math:`\alpha`:

  .. math::
    \ell_{ic} = a_i \cdot m_{ic} \cdot \mathrm{BCE}(z_{ic}, y_{ic}), \quad
    m_{ic} = \exp(-\gamma y_{ic} z_{ic} - \gamma \log(1 + e^{-z_{ic}}))
           = (1 - p_t)^{\gamma}

  The modulator is computed with ``softplus`` so it stays correct for very
  negative logits (a naive ``log1p(exp(-z))`` overflows below about -88 in
  float32). Normalisation: the official loss is
  ``class_balanced_loss(...).sum() / labels.sum()``, i.e. divided by the number
  of positive labels, not by :math:`N \cdot C`. For multi-hot labels the
  per-sample weight is the *sum* of the positive classes' weights, a property
  of the official code that this port keeps.

  Args:
    logits: `[N, C]` floating.
    labels: `[N, C]` multi-hot labels.
    class_counts: `[C]` training positives per class.
    beta: effective-number :math:`\beta`.
    gamma: focal exponent (0 gives the class-balanced sigmoid loss).

  Returns:
    `[N, C]` per-element losses.

  References:
    Cui et al., CVPR 2019; official code ``richardaecn/class-balanced-loss``.
  """
  _checks.check_logits_labels(logits, labels)
  logits = jnp.asarray(logits)
  _checks.check_class_vector(class_counts, "class_counts", logits.shape[1])
  labels = jnp.asarray(labels).astype(logits.dtype)
  w = class_balanced_weights(class_counts, beta=beta).astype(logits.dtype)
  sample_w = jnp.sum(labels * w[None, :], axis=1, keepdims=True)
  bce = -(
    labels * jax.nn.log_sigmoid(logits)
    + (1.0 - labels) * jax.nn.log_sigmoid(-logits)
  )
  if gamma == 0.0:
    modulator = 1.0
  else:
    modulator = jnp.exp(
      -gamma * labels * logits - gamma * jax.nn.softplus(-logits)
    )
  return sample_w * modulator * bce


def class_balanced_positive_bce(
  logits: ArrayLike,
  labels: ArrayLike,
  class_counts: ArrayLike,
  *,
  beta: float = 0.999,
  where: ArrayLike | None = None,
) -> jax.Array:
  r"""Class-balanced BCE on the **positive terms only** (paper 001, Task 2).

  Each class's positive term is weighted by its effective-number weight
  (:func:`class_balanced_weights`, summing to :math:`C`); negative terms
  keep weight 1, as ``BCEWithLogitsLoss(pos_weight=w)``:

  .. math::
    \ell_{ic} = -\big(w_c\, y_{ic} \log \sigma(z_{ic})
                 + (1 - y_{ic}) \log(1 - \sigma(z_{ic}))\big)

  Unlike :func:`class_balanced_loss` (the official form, one weight per
  *sample* on all its terms), a rare class's negatives are not up-weighted.

  Args:
    logits: `[N, C]` floating.
    labels: `[N, C]` multi-hot labels.
    class_counts: `[C]` training positives per class.
    beta: effective-number :math:`\beta` (paper 001: 0.999).
    where: optional `[N, C]` (or broadcastable) mask; masked elements are 0.

  Returns:
    `[N, C]` per-element losses (average them as the caller's recipe says;
    paper 001 takes the mean over :math:`N \cdot C`).

  References:
    Cui et al., CVPR 2019; paper 001 (transfer learning on ODIR), §2.4.
  """
  _checks.check_logits_labels(logits, labels)
  logits = jnp.asarray(logits)
  _checks.check_class_vector(class_counts, "class_counts", logits.shape[1])
  labels = jnp.asarray(labels).astype(logits.dtype)
  w = class_balanced_weights(class_counts, beta=beta).astype(logits.dtype)
  per = -(
    w * labels * jax.nn.log_sigmoid(logits)
    + (1.0 - labels) * jax.nn.log_sigmoid(-logits)
  )
  if where is not None:
    per = jnp.where(where, per, 0.0)
  return per
