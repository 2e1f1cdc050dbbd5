"""Gradient-based re-weighting of negative BCE terms (AGT paper, §3.4.3).

Reference:
  Jian et al., *Long-tailed multi-label retinal disease classification using
  alternate group training and gradient-based re-weighting*, Sci. Rep. 2026,
  Eqs. (1)-(4) and Algorithm 3.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from agt_jax.losses import _checks


def gradient_ratio_stats(
  logits: ArrayLike,
  labels: ArrayLike,
  *,
  where: ArrayLike | None = None,
  axis_name: str | None = None,
) -> tuple[jax.Array, jax.Array]:
  r"""Per-class mean positive and negative BCE logit gradients (paper Eq. 1).

  .. math::
    \nabla^{pos}_j = \frac{1}{|\mathcal{I}|} \sum_{i \in \mathcal{I}}
        y_{ij} (p_{ij} - 1), \qquad
    \nabla^{neg}_j = \frac{1}{|\mathcal{I}|} \sum_{i \in \mathcal{I}}
        (1 - y_{ij}) p_{ij}, \qquad p = \sigma(z)

  These are the two parts of :math:`\partial L_{BCE} / \partial z_{ij}`, split
  by the label and averaged over the batch. ``pos`` is :math:`\le 0`, ``neg``
  :math:`\ge 0`.

  The mean runs over the valid rows of the **global** batch:

  * with ``axis_name`` (inside ``jax.shard_map``), the sums and the counts are
    ``psum``-ed over that mesh axis before dividing, so every shard sees the
    statistics of the whole batch;
  * under plain ``jax.jit`` with a batch-sharded ``NamedSharding`` no
    ``axis_name`` is needed: the reduction is already global.

  Args:
    logits: `[N, C]` floating logits.
    labels: `[N, C]` multi-hot labels (bool, int or float).
    where: optional `[N]` row mask or `[N, C]` element mask; masked entries
      count neither in the sums nor in the denominators. The denominator is per
      class (number of valid rows for that class).
    axis_name: mesh axis to all-reduce over when called inside ``shard_map``.

  Returns:
    ``(pos, neg)``, each `[C]` in the logits' dtype. A class with no valid row
    gets 0 for both.

  References:
    Jian et al., *Long-tailed multi-label retinal disease classification
    using alternate group training and gradient-based re-weighting*,
    Sci. Rep. 2026, Eq. 1.
  """
  _checks.check_logits_labels(logits, labels)
  _checks.check_where(where, logits)
  logits = jnp.asarray(logits)
  labels = jnp.asarray(labels).astype(logits.dtype)
  mask = _checks.where_2d(where, logits)
  p = jax.nn.sigmoid(logits)
  pos_sum = jnp.sum(mask * labels * (p - 1.0), axis=0)
  neg_sum = jnp.sum(mask * (1.0 - labels) * p, axis=0)
  count = jnp.sum(mask, axis=0)
  if axis_name is not None:
    pos_sum, neg_sum, count = jax.lax.psum((pos_sum, neg_sum, count), axis_name)
  denom = jnp.maximum(count, 1.0)
  return pos_sum / denom, neg_sum / denom


def _ratio_to_weight(ratio: jax.Array, beta: float) -> jax.Array:
  # r ** beta with r >= 0; min(1, .) keeps well-balanced classes untouched.
  return jnp.minimum(1.0, jnp.power(ratio, beta))


def gradient_reweight_weights(
  logits: ArrayLike,
  labels: ArrayLike,
  *,
  beta: float = 2.0,
  eps: float = 1e-8,
  where: ArrayLike | None = None,
  axis_name: str | None = None,
) -> jax.Array:
  r"""Per-class negative weights from the batch gradient ratio (Eqs. 2-3).

  .. math::
    r_j = \frac{|\nabla^{pos}_j|}{|\nabla^{neg}_j| + \epsilon}, \qquad
    w_j = \min(1, r_j^{\beta})

  The weights are wrapped in ``jax.lax.stop_gradient``: they are treated as
  constants of the loss, as EQLv2 and Distribution-Balanced loss treat their
  re-weighting factors. Without it the loss would also push the logits to
  change the ratio itself, which is not what the paper describes.

  Edge case (the paper's formula, kept as is): a class with **no positive** in
  the batch has :math:`\nabla^{pos}_j = 0`, hence :math:`w_j = 0`, and its
  negatives receive no gradient in that batch.

  Worked example (paper §3.4.3): a tail class with one positive at
  :math:`p = 0.6` and nine negatives at :math:`p = 0.2` in a batch of 10 has
  ``pos = -0.04``, ``neg = 0.18`` and gets :math:`w = (0.04/0.18)^2 =
  0.0493827`; a head class with ratio 3 gets 1.

  Args:
    logits: `[N, C]` floating logits.
    labels: `[N, C]` multi-hot labels.
    beta: exponent :math:`\beta > 0` (paper default 2).
    eps: :math:`\epsilon` in the denominator.
    where: optional `[N]` or `[N, C]` validity mask.
    axis_name: mesh axis for global statistics inside ``shard_map``.

  Returns:
    `[C]` weights in :math:`[0, 1]`, gradient-stopped.

  References:
    Jian et al., *Long-tailed multi-label retinal disease classification
    using alternate group training and gradient-based re-weighting*,
    Sci. Rep. 2026, Eqs. 2-3 and the worked example of §3.4.3.
  """
  pos, neg = gradient_ratio_stats(
    logits, labels, where=where, axis_name=axis_name
  )
  ratio = jnp.abs(pos) / (jnp.abs(neg) + eps)
  return jax.lax.stop_gradient(_ratio_to_weight(ratio, beta))


def count_reweight_weights(
  labels: ArrayLike,
  *,
  beta: float = 2.0,
  eps: float = 1e-8,
  class_counts: ArrayLike | None = None,
  num_examples: ArrayLike | None = None,
  where: ArrayLike | None = None,
) -> jax.Array:
  r"""Count-based negative weights: the ablation of paper Table 4.

  .. math::
    r_j = \frac{N^{pos}_j}{N^{neg}_j + \epsilon}, \qquad
    w_j = \min(1, r_j^{\beta})

  By default the counts come from the batch (``labels``, restricted to the
  ``where`` rows). With ``class_counts`` and ``num_examples`` they come from the
  dataset instead: :math:`N^{pos}_j` = ``class_counts[j]``,
  :math:`N^{neg}_j` = ``num_examples - class_counts[j]``. On the paper's
  example (1 positive, 9 negatives) the weight is :math:`(1/9)^2 = 0.0123457`.

  Args:
    labels: `[N, C]` multi-hot labels.
    beta: exponent (default 2).
    eps: added to the negative count.
    class_counts: optional `[C]` dataset positives per class.
    num_examples: dataset size; required with ``class_counts``.
    where: optional `[N]` row mask for the batch counts.

  Returns:
    `[C]` weights in :math:`[0, 1]` (constants: gradient-stopped).

  References:
    Jian et al., *Long-tailed multi-label retinal disease classification
    using alternate group training and gradient-based re-weighting*,
    Sci. Rep. 2026, Table 4 (count-based re-weighting ablation).
  """
  labels = jnp.asarray(labels)
  _checks.check_rank(labels, 2, "labels", "[N, C]")
  if (class_counts is None) != (num_examples is None):
    raise ValueError(
      "`class_counts` and `num_examples` must be given together "
      "(dataset counts) or both omitted (batch counts)."
    )
  if class_counts is not None:
    _checks.check_class_vector(class_counts, "class_counts", labels.shape[1])
    n_pos = jnp.asarray(class_counts, jnp.float32)
    n_neg = jnp.asarray(num_examples, jnp.float32) - n_pos
  else:
    y = labels.astype(jnp.float32)
    if where is not None:
      if _checks.shape_of(where) != (labels.shape[0],):
        raise ValueError(
          f"`where` must have shape ({labels.shape[0]},), got "
          f"{_checks.shape_of(where)}."
        )
      row = jnp.asarray(where, jnp.float32)[:, None]
    else:
      row = jnp.ones((labels.shape[0], 1), jnp.float32)
    n_pos = jnp.sum(row * y, axis=0)
    n_neg = jnp.sum(row * (1.0 - y), axis=0)
  ratio = n_pos / (n_neg + eps)
  return jax.lax.stop_gradient(_ratio_to_weight(ratio, beta))


def reweighted_bce(
  logits: ArrayLike,
  labels: ArrayLike,
  negative_weights: ArrayLike,
) -> jax.Array:
  r"""Binary cross-entropy with the negative terms scaled per class (Eq. 4).

  .. math::
    \ell_{ij} = -\left[y_{ij} \log p_{ij} + w_j (1 - y_{ij})
                \log (1 - p_{ij})\right]

  computed with ``jax.nn.log_sigmoid`` so it is finite for any logit, in
  float32 and bfloat16. ``negative_weights`` is used as given (gradients flow
  into it if it is not a constant; the AGT weights are already
  gradient-stopped).

  Args:
    logits: `[N, C]` floating logits.
    labels: `[N, C]` multi-hot (or soft) labels.
    negative_weights: `[C]` per-class weights (or anything broadcastable to
      `[N, C]`).

  Returns:
    `[N, C]` per-element losses. ``.sum()`` is the paper's :math:`\mathcal{L}`.

  References:
    Jian et al., *Long-tailed multi-label retinal disease classification
    using alternate group training and gradient-based re-weighting*,
    Sci. Rep. 2026, Eq. 4.
  """
  _checks.check_logits_labels(logits, labels)
  logits = jnp.asarray(logits)
  labels = jnp.asarray(labels).astype(logits.dtype)
  w = jnp.asarray(negative_weights)
  try:
    jnp.broadcast_shapes(w.shape, logits.shape)
  except ValueError:
    raise ValueError(
      f"`negative_weights` has shape {w.shape}, which does not broadcast to "
      f"logits' shape {logits.shape}; pass [C] per-class weights."
    ) from None
  w = w.astype(logits.dtype)
  return -(
    labels * jax.nn.log_sigmoid(logits)
    + w * (1.0 - labels) * jax.nn.log_sigmoid(-logits)
  )


def gradient_reweighted_bce(
  logits: ArrayLike,
  labels: ArrayLike,
  *,
  beta: float = 2.0,
  eps: float = 1e-8,
  where: ArrayLike | None = None,
  axis_name: str | None = None,
) -> jax.Array:
  r"""The AGT teacher loss per element: Eq. 4 with Eq. 1-3 weights.

  .. math::
    \ell_{ij} = -\left[y_{ij} \log p_{ij} + w_j (1 - y_{ij})
                \log (1 - p_{ij})\right], \quad
    w = \texttt{gradient\_reweight\_weights}(z, y)

  The weights are computed from this very batch (over the global batch when
  sharded, see :func:`gradient_ratio_stats`) and are gradient-stopped.
  Masked-out elements (``where``) are 0 and do not enter the statistics.

  Args:
    logits: `[N, C]` floating logits.
    labels: `[N, C]` multi-hot labels.
    beta: exponent (paper default 2).
    eps: ratio denominator offset.
    where: optional `[N]` or `[N, C]` validity mask.
    axis_name: mesh axis for global statistics inside ``shard_map``.

  Returns:
    `[N, C]` per-element losses; ``.sum()`` is the paper's loss.

  References:
    Jian et al., *Long-tailed multi-label retinal disease classification
    using alternate group training and gradient-based re-weighting*,
    Sci. Rep. 2026, Eqs. 1-4, Algorithm 3.
  """
  w = gradient_reweight_weights(
    logits, labels, beta=beta, eps=eps, where=where, axis_name=axis_name
  )
  loss = reweighted_bce(logits, labels, w)
  if where is None:
    return loss
  return jnp.where(_checks.where_2d(where, jnp.asarray(logits)) > 0, loss, 0.0)
