"""A BAGS-style grouped classifier loss for multi-label sigmoid outputs."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from agt_jax.losses import _checks


def _kept_others(is_fg, key, ratio: float):
  """`[N]` bool: every foreground row, plus at most ``ratio * #fg`` others
  chosen uniformly (the reference subsamples with ``np.random.choice``; here
  the choice is a function of ``key``, so a step is reproducible)."""
  n = is_fg.shape[0]
  u = jax.random.uniform(key, (n,))
  u = jnp.where(is_fg, jnp.inf, u)
  k = jnp.minimum(jnp.floor(ratio * jnp.sum(is_fg)), n - jnp.sum(is_fg))
  order = jnp.argsort(u)
  rank = (
    jnp.empty((n,), jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
  )
  return is_fg | (rank < k)


def bags_loss(
  logits: ArrayLike,
  others_logits: ArrayLike,
  labels: ArrayLike,
  groups: Sequence[Sequence[int]],
  *,
  key: jax.Array | None = None,
  others_ratio: float = 8.0,
) -> tuple[jax.Array, jax.Array]:
  r"""Grouped BCE with an "others" output per group (BAGS, multi-label).

  BAGS (detection) splits classes into bins by training count and gives each
  bin its own softmax over ``[others] + its classes``; rows without a class
  of the bin are "others" and are subsampled to ``others_ratio`` times the
  bin's foreground rows, so head classes cannot swamp a tail bin with
  negatives. Multi-label adaptation (an image may hold several classes of one
  bin, which a softmax cannot express): each bin is a set of sigmoid outputs
  plus one "others" sigmoid, the target of "others" is 1 exactly when the
  row has no positive in the bin, and the bin's loss is the BCE over its
  kept rows

  .. math::
    L_g = \frac{1}{\max(|K_g|, 1)} \sum_{i \in K_g} \Big[
      \mathrm{BCE}(o_{ig}, \mathbb{1}[y_{i,g} = 0])
      + \sum_{c \in g} \mathrm{BCE}(z_{ic}, y_{ic}) \Big],
    \qquad L = \sum_g L_g,

  with :math:`K_g` = foreground rows of bin :math:`g` plus
  :math:`\lfloor \beta |fg_g| \rfloor` random others (all others when
  ``key`` is None). Inference reads :math:`\sigma(z_{c})` per class.

  Args:
    logits: `[N, C]` class logits (global class order).
    others_logits: `[N, G]` one "others" logit per group.
    labels: `[N, C]` multi-hot labels.
    groups: `G` disjoint class-index lists covering the classes.
    key: PRNG key for the others subsampling (None keeps all others).
    others_ratio: :math:`\beta` (BAGS default 8).

  Returns:
    ``(per_class [N, C], per_others [N, G])`` already divided by each
    group's :math:`\max(|K_g|, 1)`, so the loss is the sum of both.

  References:
    Li et al., *Overcoming Classifier Imbalance for Long-tail Object
    Detection with Balanced Group Softmax*, CVPR 2020.
  """
  _checks.check_logits_labels(logits, labels)
  _checks.check_floating(others_logits, "others_logits")
  z = jnp.asarray(logits)
  o = jnp.asarray(others_logits).astype(z.dtype)
  n, c = z.shape
  if o.shape != (n, len(groups)):
    raise ValueError(
      f"`others_logits` must be [N, G]=({n}, {len(groups)}), " f"got {o.shape}."
    )
  y = jnp.asarray(labels).astype(z.dtype)
  member = np.zeros((len(groups), c), np.float32)
  for g, classes in enumerate(groups):
    member[g, list(classes)] = 1.0
  if not np.all(member.sum(0) == 1):
    raise ValueError(
      "`groups` must partition the classes (each class in "
      "exactly one group)."
    )
  member = jnp.asarray(member, z.dtype)
  is_fg = (y @ member.T) > 0  # [N, G]
  if key is None:
    kept = jnp.ones_like(is_fg)
  else:
    keys = jax.random.split(key, len(groups))
    kept = jnp.stack(
      [
        _kept_others(is_fg[:, g], keys[g], others_ratio)
        for g in range(len(groups))
      ],
      axis=1,
    )
  kept = kept.astype(z.dtype)
  denom = jnp.maximum(kept.sum(0), 1.0)  # [G]
  row_w = kept / denom  # [N, G]
  bce = -(y * jax.nn.log_sigmoid(z) + (1.0 - y) * jax.nn.log_sigmoid(-z))
  t = 1.0 - is_fg.astype(z.dtype)
  bce_o = -(t * jax.nn.log_sigmoid(o) + (1.0 - t) * jax.nn.log_sigmoid(-o))
  return bce * (row_w @ member), bce_o * row_w
