"""Class-balanced knowledge distillation for the AGT student (paper §3.5)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from agt_jax.losses import _checks

_DIRECTIONS = ("teacher_student", "student_teacher")
_SCALES = ("t2", "none")


def binary_kl_divergence(
  student_logits: ArrayLike,
  teacher_logits: ArrayLike,
  *,
  temperature: float = 5.0,
  direction: str = "teacher_student",
  scale: str = "t2",
) -> jax.Array:
  r"""Per-class KL divergence between binary softened distributions (Eqs. 5-6).

  Each logit :math:`z` defines a two-point distribution
  :math:`q = [\sigma(-z/T), \sigma(z/T)]`. With :math:`q^t` from the teacher and
  :math:`q^s` from the student:

  .. math::
    \texttt{teacher\_student}: \; T^2 \sum_{k \in \{0,1\}} q^t_k
        \log \frac{q^t_k}{q^s_k} \qquad
    \texttt{student\_teacher}: \; T^2 \sum_k q^s_k \log \frac{q^s_k}{q^t_k}

  ``"teacher_student"`` is :math:`KL(q^t \| q^s)`, Hinton-style KD; its
  gradient w.r.t. the student logit is :math:`(\sigma(z_s/T) -
  \sigma(z_t/T)) \cdot T`, the same as sigmoid-BCE distillation.
  ``"student_teacher"`` is the paper's literal Eq. 6, :math:`KL(\hat q \| q)`.

  ``scale="t2"`` multiplies by :math:`T^2` (Hinton et al.'s convention: it
  keeps gradient magnitudes comparable across temperatures); ``"none"`` is
  Eqs. 6-8 as written, with no such factor (:math:`T^2 = 25` times smaller
  at the paper's T = 5). The teacher logits are under
  ``jax.lax.stop_gradient``.

  Args:
    student_logits: `[N, C]` floating.
    teacher_logits: `[N, C]` floating.
    temperature: :math:`T` (paper: 5).
    direction: ``"teacher_student"`` (default) or ``"student_teacher"``.
    scale: ``"t2"`` (default) or ``"none"`` (the paper's Eq. 6 as written).

  Returns:
    `[N, C]` per-element :math:`T^2 \cdot KL` (``scale="none"``: KL).

  Raises:
    ValueError: unknown ``direction`` or mismatched shapes.

  References:
    Jian et al., *Long-tailed multi-label retinal disease classification
    using alternate group training and gradient-based re-weighting*,
    Sci. Rep. 2026, Eqs. 5-6.
  """
  if direction not in _DIRECTIONS:
    raise ValueError(
      f"`direction` must be one of {_DIRECTIONS}, got " f"{direction!r}."
    )
  if scale not in _SCALES:
    raise ValueError(f"`scale` must be one of {_SCALES}, got {scale!r}.")
  _checks.check_logits_labels(
    student_logits, teacher_logits, "student_logits", "teacher_logits"
  )
  _checks.check_floating(teacher_logits, "teacher_logits")
  zs = jnp.asarray(student_logits) / temperature
  zt = (
    jax.lax.stop_gradient(jnp.asarray(teacher_logits).astype(zs.dtype))
    / temperature
  )
  log_s1, log_s0 = jax.nn.log_sigmoid(zs), jax.nn.log_sigmoid(-zs)
  log_t1, log_t0 = jax.nn.log_sigmoid(zt), jax.nn.log_sigmoid(-zt)
  if direction == "teacher_student":
    kl = jnp.exp(log_t1) * (log_t1 - log_s1) + jnp.exp(log_t0) * (
      log_t0 - log_s0
    )
  else:
    kl = jnp.exp(log_s1) * (log_s1 - log_t1) + jnp.exp(log_s0) * (
      log_s0 - log_t0
    )
  return (temperature**2) * kl if scale == "t2" else kl


def _inverse_counts_on_positives(labels, class_counts) -> jax.Array:
  """`[N, C]`: :math:`1/N_c` where image i has class c, else 0 (the
  class-balanced sampling probability of each (image, class) up to 1/C); a
  count of 0 is treated as 1."""
  labels = jnp.asarray(labels)
  _checks.check_rank(labels, 2, "labels", "[N, C]")
  _checks.check_class_vector(class_counts, "class_counts", labels.shape[1])
  inv = 1.0 / jnp.maximum(jnp.asarray(class_counts, jnp.float32), 1.0)
  return jnp.where(labels > 0, inv[None, :], 0.0)


def class_balanced_kd_weights(
  labels: ArrayLike,
  class_counts: ArrayLike,
) -> jax.Array:
  r"""Per-sample class-balanced distillation weights (paper §3.5).

  Under class-balanced sampling a single-label image of class :math:`c` is
  drawn with probability :math:`\frac{1}{C}\frac{1}{N_c}`; a multi-label image
  with the sum over its positive classes. The weight is their ratio, taking
  the rarest positive class as the single-label reference:

  .. math::
    w_i = \frac{\max_{c \in pos(i)} 1/N_c}{\sum_{c \in pos(i)} 1/N_c}

  (the :math:`1/C` cancels). Paper example: :math:`N = [1000, 200, 50]` and
  an image with classes 2 and 3 gets :math:`(1/50)/(1/200 + 1/50) = 0.8`.
  Images with one positive, or none, get 1. A class with count 0 is treated
  as count 1.

  Args:
    labels: `[N, C]` multi-hot labels.
    class_counts: `[C]` training-set positives per class.

  Returns:
    `[N]` weights in :math:`(0, 1]` (constants).

  References:
    Jian et al., *Long-tailed multi-label retinal disease classification
    using alternate group training and gradient-based re-weighting*,
    Sci. Rep. 2026, §3.5 and its worked example.
  """
  inv_pos = _inverse_counts_on_positives(labels, class_counts)
  total = jnp.sum(inv_pos, axis=1)
  best = jnp.max(inv_pos, axis=1)
  w = jnp.where(total > 0, best / jnp.where(total > 0, total, 1.0), 1.0)
  return jax.lax.stop_gradient(w)


def class_balanced_kd(
  student_logits: ArrayLike,
  teacher_logits: ArrayLike,
  labels: ArrayLike,
  class_counts: ArrayLike,
  *,
  temperature: float = 5.0,
  direction: str = "teacher_student",
  scale: str = "t2",
) -> jax.Array:
  r"""Class-balanced distillation loss per sample (paper Eq. 7).

  .. math::
    L^{KD}_i = w_i \sum_j T^2 \, KL_{ij}

  with :math:`w_i` from :func:`class_balanced_kd_weights` and :math:`KL_{ij}`
  from :func:`binary_kl_divergence`. The student objective of Eq. 8 is
  ``bce.sum(-1).mean() + gamma * class_balanced_kd(...).mean()`` (the batch
  reduction is the caller's choice).

  Args:
    student_logits: `[N, C]` floating.
    teacher_logits: `[N, C]` floating (gradient-stopped).
    labels: `[N, C]` multi-hot labels.
    class_counts: `[C]` training-set positives per class.
    temperature: :math:`T` (paper: 5).
    direction, scale: see :func:`binary_kl_divergence`.

  Returns:
    `[N]` per-sample losses.

  References:
    Jian et al., *Long-tailed multi-label retinal disease classification
    using alternate group training and gradient-based re-weighting*,
    Sci. Rep. 2026, Eqs. 7-8.
  """
  _checks.check_same_shape(labels, "labels", student_logits, "student_logits")
  kl = binary_kl_divergence(
    student_logits,
    teacher_logits,
    temperature=temperature,
    direction=direction,
    scale=scale,
  )
  w = class_balanced_kd_weights(labels, class_counts).astype(kl.dtype)
  return w * jnp.sum(kl, axis=-1)


def subset_kd_weights(groups, labels_or_counts: ArrayLike) -> jax.Array:
  r"""Per-class weights of the multi-teacher baseline's weighted KD.

  Subset :math:`g` (one teacher) gets
  :math:`\lambda_g = \frac{P}{G\,P_g}`, the inverse of its share of the
  training positives normalised to mean 1 over subsets; every class of the
  subset carries its subset's weight.

  Args:
    groups: `G` disjoint class-index lists.
    labels_or_counts: `[C]` training positives per class.

  Returns:
    `[C]` weights.

  References:
    Ju et al., *Relational Subsets Knowledge Distillation for Long-tailed
    Retinal Diseases Recognition*, MICCAI 2021 (one teacher per subset and a
    weighted KD; no code is public, so this weighting is this library's
    choice).
  """
  counts = jnp.asarray(labels_or_counts, jnp.float32)
  per_group = jnp.stack([counts[jnp.asarray(list(g))].sum() for g in groups])
  lam = counts.sum() / (len(groups) * jnp.maximum(per_group, 1.0))
  out = jnp.zeros_like(counts)
  for g, classes in enumerate(groups):
    out = out.at[jnp.asarray(list(classes))].set(lam[g])
  return out


def eq7_kd_weights(
  labels: ArrayLike,
  class_counts: ArrayLike,
) -> jax.Array:
  r"""Per-(sample, positive class) weights of paper Eq. 7, as written.

  Under class-balanced sampling image :math:`j` is drawn as a member of its
  positive class :math:`i` with probability :math:`\frac{1}{C}\frac{1}{N_i}`
  and overall with :math:`\frac{1}{C}\sum_{k \in pos(j)} \frac{1}{N_k}`;
  Eq. 7 weights the class-:math:`i` term of image :math:`j` by their ratio

  .. math::
    w_i^j = \frac{1/N_i}{\sum_{k \in pos(j)} 1/N_k} \quad (y_{ji} = 1),
    \qquad w_i^j = 0 \quad (y_{ji} = 0)

  so each image's weights sum to 1 over its positive classes (a single-label
  image gets 1). Paper example: :math:`N = [1000, 200, 50]`, an image of
  classes 2 and 3 gets ``[0, 0.2, 0.8]``. A class with count 0 is treated as
  count 1.

  Args:
    labels: `[N, C]` multi-hot labels.
    class_counts: `[C]` training-set positives per class.

  Returns:
    `[N, C]` weights (constants), zero on negatives.

  References:
    Jian et al., *Long-tailed multi-label retinal disease classification
    using alternate group training and gradient-based re-weighting*,
    Sci. Rep. 2026, Eq. 7.
  """
  inv_pos = _inverse_counts_on_positives(labels, class_counts)
  total = jnp.sum(inv_pos, axis=1, keepdims=True)
  return jax.lax.stop_gradient(inv_pos / jnp.where(total > 0, total, 1.0))


def eq7_class_balanced_kd(
  student_logits: ArrayLike,
  teacher_logits: ArrayLike,
  labels: ArrayLike,
  class_counts: ArrayLike,
  *,
  temperature: float = 5.0,
  direction: str = "teacher_student",
  scale: str = "t2",
) -> jax.Array:
  r"""Class-balanced distillation per element, paper Eq. 7 as written.

  .. math::
    L_{KD} = \sum_i^C \sum_{j \in \mathcal{N}_i} T^2\,
      KL(\hat q_i^j \,\|\, q_i^j)\; w_i^j

  Only the positive classes of each image are distilled, each weighted by
  :func:`eq7_kd_weights`; :func:`class_balanced_kd` is the per-sample
  reading (one weight per image on the KL of every class).

  Args:
    student_logits: `[N, C]` floating.
    teacher_logits: `[N, C]` floating (gradient-stopped).
    labels: `[N, C]` multi-hot labels.
    class_counts: `[C]` training-set positives per class.
    temperature: :math:`T` (paper: 5).
    direction, scale: see :func:`binary_kl_divergence`.

  Returns:
    `[N, C]` per-element losses (zero on negatives); ``.sum(-1).mean()`` is
    the batch mean of Eq. 7's per-image terms.

  References:
    Jian et al., *Long-tailed multi-label retinal disease classification
    using alternate group training and gradient-based re-weighting*,
    Sci. Rep. 2026, Eqs. 5-7.
  """
  _checks.check_same_shape(labels, "labels", student_logits, "student_logits")
  kl = binary_kl_divergence(
    student_logits,
    teacher_logits,
    temperature=temperature,
    direction=direction,
    scale=scale,
  )
  return eq7_kd_weights(labels, class_counts).astype(kl.dtype) * kl
