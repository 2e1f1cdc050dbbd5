"""RIDE: LDAM-margin experts with a diversity term (Wang et al.), single-label."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from agt_jax.losses import _checks
from agt_jax.losses._class_balanced import class_balanced_weights


def ldam_margins(
  class_counts: ArrayLike, *, max_margin: float = 0.5
) -> jax.Array:
  r"""LDAM per-class margins.

  .. math::
    m_c = m_{max} \frac{n_c^{-1/4}}{\max_k n_k^{-1/4}}

  Args:
    class_counts: `[C]` training examples per class (0 is treated as 1).
    max_margin: :math:`m_{max}`, the margin of the rarest class.

  Returns:
    `[C]` margins.

  References:
    Cao et al., *Learning Imbalanced Datasets with Label-Distribution-Aware
    Margin Loss*, NeurIPS 2019.
  """
  # A class without training examples gets the largest margin, not inf.
  m = jnp.maximum(jnp.asarray(class_counts, jnp.float32), 1.0) ** -0.25
  return m * (max_margin / jnp.max(m))


def ride_loss(
  expert_logits: ArrayLike,
  targets: ArrayLike,
  class_counts: ArrayLike,
  *,
  scale: float = 30.0,
  max_margin: float = 0.5,
  reweight: bool = False,
  diversity_factor: float = -0.2,
  beta: float = 0.9999,
  base_temperature: float = 1.0,
  reweight_factor: float = 0.05,
) -> jax.Array:
  r"""The RIDE training loss for :math:`E` experts (single-label softmax).

  The ensemble output is the mean of the expert logits,
  :math:`\bar z = \frac{1}{E}\sum_e z_e`. For every expert:

  .. math::
    \mathcal{L} = \sum_e \Big[ \mathrm{CE}_{w}(z_e - s\, m_{y}\, \mathbb{1}_y,\;
        y) + \lambda_{div} \bar T^2 \,
        \mathrm{KL}\big(\mathrm{sg}[\mathrm{softmax}(\bar z / T)] \,\|\,
        \mathrm{softmax}(z_e / T)\big) \Big]

  * LDAM margin: the target logit is lowered by :math:`s\, m_y`, with
    :math:`m` from :func:`ldam_margins` (the logits are assumed already scaled
    by :math:`s`, as RIDE's normalised experts are).
  * ``reweight=True`` is the deferred re-weighting phase (DRW): class weights
    :math:`w` = effective-number weights (sum :math:`C`) in a weighted-mean CE
    (:math:`\sum_i w_{y_i} \mathrm{ce}_i / \sum_i w_{y_i}`), and per-class
    diversity temperatures
    :math:`T_c = T_0 (C f_c \rho + 1 - \rho) / \max`, :math:`f = n / \sum n`,
    :math:`\rho` = ``reweight_factor``, :math:`\bar T = \mathrm{mean}(T)`.
    Otherwise :math:`w = 1` and :math:`T = \bar T = T_0`.
  * ``diversity_factor`` :math:`\lambda_{div}` is negative (default -0.2), so
    the KL term pushes experts apart; KL is the batch mean. The ensemble target
    is gradient-stopped. As in the reference, with ``diversity_factor == 0``
    every expert's CE is computed on the ensemble logits.

  Args:
    expert_logits: `[E, N, C]` floating.
    targets: `[N]` integer class indices.
    class_counts: `[C]` training examples per class.
    scale, max_margin: LDAM :math:`s` and largest margin.
    reweight: enable the DRW phase.
    diversity_factor: :math:`\lambda_{div}`.
    beta: effective-number :math:`\beta` for the DRW weights.
    base_temperature: :math:`T_0`.
    reweight_factor: :math:`\rho`.

  Returns:
    Scalar loss.

  References:
    Wang et al., *Long-tailed Recognition by Routing Diverse
    Distribution-Aware Experts*, ICLR 2021.
  """
  _checks.check_floating(expert_logits, "expert_logits")
  _checks.check_rank(expert_logits, 3, "expert_logits", "[E, N, C]")
  z = jnp.asarray(expert_logits)
  e, n, c = z.shape
  targets = jnp.asarray(targets)
  if targets.shape != (n,) or not jnp.issubdtype(targets.dtype, jnp.integer):
    raise ValueError(
      f"`targets` must be [N]=({n},) integer class indices, got "
      f"shape {targets.shape} dtype {targets.dtype}."
    )
  _checks.check_class_vector(class_counts, "class_counts", c)
  counts = jnp.asarray(class_counts, jnp.float32)
  onehot = jax.nn.one_hot(targets, c, dtype=z.dtype)
  margin = (ldam_margins(counts, max_margin=max_margin) * scale).astype(z.dtype)
  mean_logits = jnp.mean(z, axis=0)

  if reweight:
    class_w = class_balanced_weights(counts, beta=beta).astype(z.dtype)
    f = counts / jnp.sum(counts)
    t = c * f * reweight_factor + 1.0 - reweight_factor
    temperature = (base_temperature * t / jnp.max(t)).astype(z.dtype)
  else:
    class_w = jnp.ones((c,), z.dtype)
    temperature = jnp.full((c,), base_temperature, z.dtype)
  t_mean = jnp.mean(temperature)
  sample_w = class_w[targets]
  target_dist = jax.lax.stop_gradient(
    jax.nn.softmax(mean_logits / temperature, axis=-1)
  )

  total = jnp.zeros((), z.dtype)
  for k in range(e):
    ce_logits = z[k] if diversity_factor != 0 else mean_logits
    ce_logits = ce_logits - onehot * margin[None, :]
    ce = -jnp.sum(onehot * jax.nn.log_softmax(ce_logits, axis=-1), axis=-1)
    total += jnp.sum(sample_w * ce) / jnp.sum(sample_w)
    log_q = jax.nn.log_softmax(z[k] / temperature, axis=-1)
    kl = (
      jnp.sum(
        jax.scipy.special.xlogy(target_dist, target_dist) - target_dist * log_q
      )
      / n
    )
    total += diversity_factor * t_mean * t_mean * kl
  return total


def ride_multilabel_loss(
  expert_logits: ArrayLike,
  labels: ArrayLike,
  class_counts: ArrayLike,
  *,
  scale: float = 30.0,
  max_margin: float = 0.5,
  diversity_factor: float = -0.2,
  temperature: float = 1.0,
  negative_weights: ArrayLike | None = None,
) -> jax.Array:
  r"""RIDE for multi-label sigmoid outputs (the adaptation used in Table 1).

  RIDE is single-label; this keeps its three parts and replaces each
  softmax by the per-class Bernoulli of a sigmoid:

  * **LDAM margin on positives**: a positive logit is lowered by
    :math:`s\,m_c` before its BCE, so each expert must clear a larger margin
    on rarer classes (:math:`m` from :func:`ldam_margins`; the logits are
    cosine similarities scaled by :math:`s`, as RIDE's normalised experts).
  * **Per-expert BCE** summed over classes, mean over samples, with optional
    ``negative_weights`` :math:`w_c` on the negative terms (``Ours + RIDE``
    passes AGT's gradient re-weighting weights here).
  * **Diversity**: :math:`\lambda_{div} T^2 \cdot` the per-class binary KL
    :math:`KL(\mathrm{sg}[q(\bar z/T)] \,\|\, q(z_e/T))` summed over classes,
    mean over samples, with :math:`\bar z` the mean of the expert logits;
    :math:`\lambda_{div} < 0` pushes the experts apart.

  The total is summed over experts, as the reference. The deferred
  re-weighting phase (DRW) is not included: AGT's weights take its place.

  Args:
    expert_logits: `[E, N, C]` floating (already scaled by ``scale``).
    labels: `[N, C]` multi-hot labels.
    class_counts: `[C]` training positives per class.
    scale, max_margin: LDAM :math:`s` and largest margin.
    diversity_factor: :math:`\lambda_{div}` (reference default -0.2).
    temperature: :math:`T` of the diversity term.
    negative_weights: optional `[C]` weights on the negative BCE terms
      (treated as constants).

  Returns:
    Scalar loss.

  References:
    Wang et al., *Long-tailed Recognition by Routing Diverse
    Distribution-Aware Experts*, ICLR 2021.
  """
  _checks.check_floating(expert_logits, "expert_logits")
  _checks.check_rank(expert_logits, 3, "expert_logits", "[E, N, C]")
  z = jnp.asarray(expert_logits)
  e, n, c = z.shape
  _checks.check_same_shape(labels, "labels", z[0], "expert_logits[0]")
  _checks.check_class_vector(class_counts, "class_counts", c)
  y = jnp.asarray(labels).astype(z.dtype)
  margin = (ldam_margins(class_counts, max_margin=max_margin) * scale).astype(
    z.dtype
  )
  if negative_weights is None:
    w = jnp.ones((c,), z.dtype)
  else:
    _checks.check_class_vector(negative_weights, "negative_weights", c)
    w = jax.lax.stop_gradient(jnp.asarray(negative_weights).astype(z.dtype))
  mean_logits = jnp.mean(z, axis=0)
  zt = jax.lax.stop_gradient(mean_logits) / temperature
  t1, t0 = jax.nn.log_sigmoid(zt), jax.nn.log_sigmoid(-zt)
  total = jnp.zeros((), z.dtype)
  for k in range(e):
    zm = z[k] - y * margin[None, :]
    bce = -(
      y * jax.nn.log_sigmoid(zm)
      + w[None, :] * (1.0 - y) * jax.nn.log_sigmoid(-zm)
    )
    total += bce.sum(-1).mean()
    zs = z[k] / temperature
    kl = jnp.exp(t1) * (t1 - jax.nn.log_sigmoid(zs)) + jnp.exp(t0) * (
      t0 - jax.nn.log_sigmoid(-zs)
    )
    total += diversity_factor * temperature**2 * kl.sum(-1).mean()
  return total
