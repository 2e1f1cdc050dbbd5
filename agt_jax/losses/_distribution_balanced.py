"""Distribution-Balanced loss for multi-label long-tailed data (Wu et al.)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from agt_jax.losses import _checks


def distribution_balanced_loss(
  logits: ArrayLike,
  labels: ArrayLike,
  class_counts: ArrayLike,
  num_examples: ArrayLike,
  *,
  neg_scale: float = 2.0,
  init_bias: float = 0.05,
  map_alpha: float = 0.1,
  map_beta: float = 10.0,
  map_gamma: float = 0.2,
  focal_gamma: float = 2.0,
  balance_param: float = 2.0,
) -> jax.Array:
  r"""Distribution-Balanced loss (re-balanced weights + NTR + focal), per element.

  With :math:`n_j` the class counts and :math:`N` the number of training
  examples:

  1. re-balancing weight, the same for positives and negatives:
     :math:`r_i = \sum_j y_{ij}/n_j`,
     :math:`w_{ij} = \sigma(\beta_m((1/n_j)/r_i - \mu_m)) + \alpha_m`;
  2. negative-tolerant regularisation: a prior bias
     :math:`v_j = -\log(N/n_j - 1)\,\kappa/\lambda`, :math:`z' = z + v`, and
     for negatives :math:`z'' = \lambda z'` with weight :math:`w/\lambda`;
  3. focal term :math:`\ell = b\,(1 - p_t)^{\gamma} \, w'' \,
     \mathrm{BCE}(z'', y)` with :math:`p_t = \exp(-\mathrm{BCE}(z'', y))`.

  Defaults are the published COCO configuration (``LT_resnet50_pfc_DB``), not
  the constructor defaults of the reference class. The published training loss
  is ``.mean()`` over all :math:`N \cdot C` elements. Unlike the reference
  code, the caller's logits are not modified in place. A sample with no
  positive label has :math:`r_i = 0` and weight :math:`1 + \alpha_m`
  everywhere. The weights depend only on labels and counts; the focal factor
  is not detached (as in the reference).

  Args:
    logits: `[N, C]` floating.
    labels: `[N, C]` multi-hot labels.
    class_counts: `[C]` training positives per class (``class_freq``).
    num_examples: training-set size (``class_freq + neg_class_freq``).
    neg_scale: :math:`\lambda`.
    init_bias: :math:`\kappa`.
    map_alpha, map_beta, map_gamma: :math:`\alpha_m, \beta_m, \mu_m`.
    focal_gamma: :math:`\gamma`.
    balance_param: :math:`b`.

  Returns:
    `[N, C]` per-element losses.

  References:
    Wu et al., *Distribution-Balanced Loss for Multi-Label Classification in
    Long-Tailed Datasets*, ECCV 2020.
  """
  _checks.check_logits_labels(logits, labels)
  logits = jnp.asarray(logits)
  _checks.check_class_vector(class_counts, "class_counts", logits.shape[1])
  dtype = logits.dtype
  y = jnp.asarray(labels).astype(dtype)
  n = jnp.asarray(class_counts, jnp.float32)
  freq_inv = 1.0 / n
  repeat_rate = jnp.sum(y.astype(jnp.float32) * freq_inv, axis=1, keepdims=True)
  # r_i = 0 (no positive) makes the ratio +inf and the sigmoid 1, as in the
  # reference; the explicit where avoids 0/0 warnings and NaNs.
  ratio = jnp.where(
    repeat_rate > 0,
    freq_inv[None, :] / jnp.where(repeat_rate > 0, repeat_rate, 1.0),
    jnp.inf,
  )
  w = (jax.nn.sigmoid(map_beta * (ratio - map_gamma)) + map_alpha).astype(dtype)
  prior = -jnp.log(jnp.asarray(num_examples, jnp.float32) / n - 1.0)
  z = logits + (prior * init_bias / neg_scale).astype(dtype)
  z = z * (1.0 - y) * neg_scale + z * y
  w = w / neg_scale * (1.0 - y) + w * y
  bce = -(y * jax.nn.log_sigmoid(z) + (1.0 - y) * jax.nn.log_sigmoid(-z))
  pt = jnp.exp(-bce)
  return balance_param * (1.0 - pt) ** focal_gamma * w * bce
