"""Batch samplers as Grain ``MapDataset``\\ s of label-only batches.

Every sampler works on the training split's `[n, C]` multi-hot label matrix and
yields, for step ``t``, ``{"index": int64 [b], "labels": uint8 [b, C]}`` (plus
``"group"`` for the AGT sampler). Images are attached by a separate ``.map``
(:mod:`agt_jax.data.pipeline`), so one loader serves every sampler.

All samplers are deterministic under their seed and random-access: ``ds[t]``
is the batch of step ``t``, which is what makes resuming exact.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence

import grain
import numpy as np

from agt_jax.errors import InputError

_INFINITE_STEPS = 1 << 40


# -- groups ------------------------------------------------------------------


def validate_groups(
  groups: Sequence[Sequence[int | str]],
  num_classes: int,
  class_names: Sequence[str] | None = None,
) -> tuple[tuple[int, ...], ...]:
  """Checks that ``groups`` partition the classes; accepts indices or names.

  Raises:
    ValueError: a class is missing, repeated, unknown, or a group is empty.
  """
  out, seen = [], {}
  for gi, group in enumerate(groups):
    if len(group) == 0:
      raise InputError(f"group {gi} is empty.")
    members = []
    for c in group:
      if isinstance(c, str):
        if class_names is None or c not in class_names:
          raise InputError(
            f"group {gi}: unknown class {c!r} (classes: "
            f"{list(class_names or [])})."
          )
        c = list(class_names).index(c)
      c = int(c)
      if not 0 <= c < num_classes:
        raise InputError(
          f"group {gi}: class index {c} outside " f"[0, {num_classes})."
        )
      if c in seen:
        raise InputError(
          f"class {c} is in group {seen[c]} and group {gi}; "
          "each class must be in exactly one group."
        )
      seen[c] = gi
      members.append(c)
    out.append(tuple(members))
  missing = sorted(set(range(num_classes)) - set(seen))
  if missing:
    names = [class_names[c] for c in missing] if class_names else missing
    raise InputError(
      f"classes {names} are in no group; groups must cover "
      f"all {num_classes} classes."
    )
  return tuple(out)


@dataclasses.dataclass(frozen=True)
class RoundRobinSchedule:
  """Group of step ``t``: cycles through the groups, ``switch_every`` steps
  per group (1 = the paper's per-step alternation; larger blocks reproduce the
  forgetting experiment of paper Fig. 5)."""

  num_groups: int
  switch_every: int = 1

  def group(self, step: int) -> int:
    return (step // self.switch_every) % self.num_groups

  def visits_before(self, step: int) -> int:
    """Steps before ``step`` that had the same group."""
    block = step // self.switch_every
    return (
      block // self.num_groups
    ) * self.switch_every + step % self.switch_every


# -- picklable per-example pieces (mp_prefetch workers pickle them) -----------


@dataclasses.dataclass(frozen=True)
class _ClassThenImage:
  """Draws a class with probability ``class_p``, then one of its images."""

  class_ids: np.ndarray
  class_p: np.ndarray
  members: tuple[np.ndarray, ...]

  def __call__(self, _, rng: np.random.Generator) -> int:
    k = rng.choice(len(self.class_ids), p=self.class_p)
    m = self.members[k]
    return int(m[rng.integers(len(m))])


@dataclasses.dataclass(frozen=True)
class _AttachLabels:
  labels: np.ndarray

  def __call__(self, index) -> dict:
    index = np.asarray(index, np.int64)
    return {"index": index, "labels": self.labels[index]}


@dataclasses.dataclass(frozen=True)
class _AttachGroup:
  schedule: RoundRobinSchedule
  fixed: int | None = None  # every batch this group

  def __call__(self, step: int, batch: dict) -> dict:
    g = self.schedule.group(step) if self.fixed is None else self.fixed
    return {**batch, "group": np.int32(g)}


class _GroupMixSelection(grain.transforms.DatasetSelectionMap):
  """Routes example ``j`` of the flat stream to its parent stream.

  ``step, slot = divmod(j, b)``; the first ``b_group`` slots read the active
  group's stream at ``k * b_group + slot``, the rest read that group's
  "others" stream at ``k * b_other + slot - b_group``, where ``k`` counts the
  earlier steps of the same group. Stateless, so any step is addressable.
  """

  def __init__(self, schedule, batch_size, b_group, num_steps):
    self._schedule, self._b, self._bg = schedule, batch_size, b_group
    self._bo = batch_size - b_group
    self._len = num_steps * batch_size

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index: int) -> tuple[int, int]:
    step, slot = divmod(index, self._b)
    g = self._schedule.group(step)
    k = self._schedule.visits_before(step)
    if slot < self._bg:
      return g, k * self._bg + slot
    return self._schedule.num_groups + g, k * self._bo + slot - self._bg


def _outside(labels: np.ndarray, classes) -> list[int]:
  """The classes outside ``classes`` that have images: where a group's
  "others" slots draw from."""
  return [
    c for c in range(labels.shape[1]) if c not in classes and labels[:, c].any()
  ]


def _members(labels: np.ndarray, classes) -> tuple[np.ndarray, ...]:
  return tuple(np.flatnonzero(labels[:, c]) for c in classes)


def _check_labels(labels) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.ndim != 2:
    raise InputError(f"labels must be [n, C], got shape {labels.shape}.")
  bad = ~np.isin(labels, (0, 1))
  if bad.any():
    r, c = np.argwhere(bad)[0]
    raise InputError(
      f"labels must be 0/1; row {r}, column {c} is " f"{labels[r, c]!r}."
    )
  return labels.astype(np.uint8)


def group_sizes(batch_size: int, alpha: float) -> tuple[int, int]:
  """``(b - round(alpha b), round(alpha b))``: active-group and others slots."""
  if not 0.0 <= alpha <= 1.0:
    raise InputError(f"alpha must be in [0, 1], got {alpha}.")
  b_other = int(round(alpha * batch_size))
  return batch_size - b_other, b_other


def group_mixed_batches(
  labels,
  groups,
  *,
  batch_size: int,
  alpha: float,
  seed: int,
  switch_every: int = 1,
  num_steps: int | None = None,
  class_names: Sequence[str] | None = None,
) -> grain.MapDataset:
  """The AGT teacher's batches (paper Algorithms 2 and 4).

  For the active group ``g`` of step ``t`` (see :class:`RoundRobinSchedule`):

  * the first ``b - round(alpha b)`` examples have at least one positive label
    in ``g``; they walk through a per-group stream that is reshuffled every
    epoch of the group's images;
  * the last ``round(alpha b)`` are drawn class-balanced over the classes
    outside ``g``: a class uniformly among those with at least one image, then
    one of its images uniformly.

  The composition is exact in every batch. Element ``t`` is
  ``{"index": int64 [b], "labels": uint8 [b, C], "group": int32}``, with
  indices into ``labels``.

  Args:
    labels: `[n, C]` 0/1 training labels.
    groups: class-index (or class-name) lists that partition the classes.
    batch_size: ``b``.
    alpha: share of "others" slots.
    seed: sampling seed.
    switch_every: steps per group before switching (1 = every step).
    num_steps: dataset length (default: effectively infinite).
    class_names: to resolve group names.

  Returns:
    A ``grain.MapDataset`` of batches.
  """
  labels = _check_labels(labels)
  groups = validate_groups(groups, labels.shape[1], class_names)
  b_group, b_other = group_sizes(batch_size, alpha)
  if switch_every < 1:
    raise InputError(f"switch_every must be >= 1, got {switch_every}.")
  sched = RoundRobinSchedule(len(groups), switch_every)
  num_steps = _INFINITE_STEPS if num_steps is None else int(num_steps)
  parents, others = [], []
  for g, classes in enumerate(groups):
    idx = np.flatnonzero(labels[:, list(classes)].any(1))
    if b_group and len(idx) == 0:
      names = [class_names[c] for c in classes] if class_names else classes
      raise InputError(f"group {g} {names} has no training image.")
    parents.append(
      grain.MapDataset.source(idx).seed(seed * 7919 + g).shuffle().repeat()
    )
    outside = _outside(labels, classes)
    if b_other and not outside:
      raise InputError(
        f"group {g}: no class outside it has images to draw "
        "'others' from; use alpha=0 or more groups."
      )
    pick = _ClassThenImage(
      np.array(outside),
      np.full(len(outside), 1 / max(len(outside), 1)),
      _members(labels, outside),
    )
    others.append(
      grain.MapDataset.range(sys.maxsize).random_map(
        pick, seed=seed * 7919 + 1000 + g
      )
    )
  selection = _GroupMixSelection(sched, batch_size, b_group, num_steps)
  ds = grain.MapDataset.select_from_datasets(parents + others, selection)
  return (
    ds.batch(batch_size, drop_remainder=True, batch_fn=np.asarray)
    .map(_AttachLabels(labels))
    .map_with_index(_AttachGroup(sched))
  )


def group_mixed_prevalence(
  labels,
  groups,
  *,
  batch_size: int,
  alpha: float,
  class_names: Sequence[str] | None = None,
) -> np.ndarray:
  r"""`[G, C]` expected prevalence of each class in the batches of
  :func:`group_mixed_batches` whose active group is ``g`` (closed form).

  A batch of group ``g`` has ``b_g = b - round(alpha b)`` slots read from
  shuffled epochs of :math:`I_g` (the images with a positive in ``g``) and
  ``b_o = round(alpha b)`` slots drawn class-balanced over the classes
  :math:`O_g` outside ``g`` that have images (a class uniformly, then one of
  its images :math:`M_k` uniformly), so every slot's marginal label is

  .. math::
    q_{gc} = \frac{b_g}{b}\,\frac{1}{|I_g|}\sum_{i \in I_g} y_{ic}
      + \frac{b_o}{b}\,\frac{1}{|O_g|}\sum_{k \in O_g}\frac{1}{|M_k|}
        \sum_{i \in M_k} y_{ic}

  (exact per slot for the class-balanced part; for the group part, exact
  over whole epochs of the group's stream).
  """
  labels = _check_labels(labels).astype(np.float64)
  groups = validate_groups(groups, labels.shape[1], class_names)
  b_group, b_other = group_sizes(batch_size, alpha)
  out = np.zeros((len(groups), labels.shape[1]))
  for g, classes in enumerate(groups):
    own = labels[labels[:, list(classes)].any(1)]
    if b_group:
      out[g] += b_group / batch_size * own.mean(0)
    outside = _outside(labels, classes)
    if b_other and outside:
      per_class = np.stack([labels[labels[:, k] > 0].mean(0) for k in outside])
      out[g] += b_other / batch_size * per_class.mean(0)
  return out


def prior_shift(
  labels,
  groups,
  *,
  batch_size: int,
  alpha: float,
  class_names: Sequence[str] | None = None,
) -> np.ndarray:
  r"""`[G, C]` log-odds shift of the group-mixed sampler,
  :math:`\delta_{gc} = \mathrm{logit}(q_{gc}) - \mathrm{logit}(p_c)`,
  with :math:`q` from :func:`group_mixed_prevalence` and :math:`p_c` the
  class's prevalence in ``labels`` (the training split).

  Under label shift (the sampler changes how often a class is seen, not what
  its images look like) the log-odds a model fits on batches of group ``g``
  are the natural ones plus :math:`\delta_g`; training with
  ``BCE(z + delta[g], y)`` makes ``z`` estimate the natural-prior log-odds
  (logit adjustment, Menon et al., ICLR 2021). No free parameter. Classes
  that are never (or always) positive get 0.
  """
  labels = _check_labels(labels)
  q = group_mixed_prevalence(
    labels, groups, batch_size=batch_size, alpha=alpha, class_names=class_names
  )
  p = labels.astype(np.float64).mean(0)
  ok = (p > 0) & (p < 1)
  eps = 1e-6
  qc = np.clip(q, eps, 1 - eps)
  pc = np.clip(p, eps, 1 - eps)
  delta = np.log(qc / (1 - qc)) - np.log(pc / (1 - pc))[None]
  return np.where(ok[None], delta, 0.0)


def _batched(
  index_ds: grain.MapDataset, labels, batch_size
) -> grain.MapDataset:
  return index_ds.batch(
    batch_size, drop_remainder=True, batch_fn=np.asarray
  ).map(_AttachLabels(labels))


def instance_balanced_batches(
  labels, *, batch_size: int, seed: int
) -> grain.MapDataset:
  """Plain shuffled epochs of all images (instance-balanced sampling)."""
  labels = _check_labels(labels)
  idx = grain.MapDataset.range(len(labels)).seed(seed).shuffle().repeat()
  return _batched(idx, labels, batch_size)


def class_aware_batches(
  labels,
  *,
  batch_size: int,
  seed: int,
  power: float = 0.0,
  group: int | None = None,
) -> grain.MapDataset:
  """Class-aware sampling: class ``c`` with probability
  :math:`\\propto n_c^{power}`, then one of its images uniformly.

  ``power=0`` is class-balanced sampling, ``power=0.5`` square-root sampling
  (and ``power=1`` approximates instance-balanced sampling, with multi-label
  images counted once per positive class). With ``group`` every batch
  carries it as its ``"group"`` (a one-head teacher's step reads one).
  """
  labels = _check_labels(labels)
  counts = labels.sum(0).astype(np.float64)
  classes = np.flatnonzero(counts > 0)
  p = counts[classes] ** power
  pick = _ClassThenImage(classes, p / p.sum(), _members(labels, classes))
  idx = grain.MapDataset.range(sys.maxsize).random_map(pick, seed=seed)
  ds = _batched(idx, labels, batch_size)
  if group is not None:
    ds = ds.map_with_index(_AttachGroup(RoundRobinSchedule(1), group))
  return ds


def class_balanced_batches(
  labels, *, batch_size: int, seed: int, group: int | None = None
):
  """Class uniformly, then an image of it uniformly (Table 1's
  class-balanced sampling)."""
  return class_aware_batches(
    labels, batch_size=batch_size, seed=seed, power=0.0, group=group
  )


def instance_class_balanced_weights(labels) -> np.ndarray:
  """Per-image sampling weight :math:`\\sum_{c \\in pos(i)} 1/n_c` (images
  without a positive get the smallest positive weight)."""
  labels = _check_labels(labels)
  counts = np.maximum(labels.sum(0), 1).astype(np.float64)
  w = (labels / counts).sum(1)
  w[w == 0] = w[w > 0].min() if (w > 0).any() else 1.0
  return w


def random_undersample_indices(
  labels, *, seed: int, target: int | None = None
) -> np.ndarray:
  """RUS (TFA-LT stage I): a fixed subset where head classes are thinned.

  Each image is kept with probability :math:`\\min(1, t / n_{c^*})`, with
  :math:`c^*` its rarest positive class and :math:`t` the ``target`` count
  (default: the median class count). Images without a label are treated like
  the most frequent class. Returns sorted kept indices.
  """
  labels = _check_labels(labels)
  counts = labels.sum(0).astype(np.float64)
  t = float(np.median(counts[counts > 0])) if target is None else float(target)
  masked = np.where(labels > 0, counts[None, :], np.inf)
  rarest = masked.min(1)
  rarest[np.isinf(rarest)] = counts.max()
  keep = np.random.default_rng(seed).random(len(labels)) < np.minimum(
    1.0, t / rarest
  )
  return np.flatnonzero(keep)


@dataclasses.dataclass(frozen=True)
class _GroupAwareCompletion:
  """One GAC batch from step ``t``'s seed (see :func:`gac_batches`)."""

  labels: np.ndarray
  groups: tuple[tuple[int, ...], ...]
  batch_size: int
  per_group: int
  seed: int
  picks: tuple[_ClassThenImage, ...]

  def __call__(self, step: int, _) -> np.ndarray:
    rng = np.random.default_rng((self.seed, step))
    n, m = len(self.labels), self.per_group
    out = list(rng.integers(n, size=self.batch_size - m * len(self.groups)))
    drawn = self.labels[np.asarray(out, np.int64)]
    for g, classes in enumerate(self.groups):
      if not (len(out) and drawn[:, list(classes)].any()):  # missing
        out += [self.picks[g](None, rng) for _ in range(m)]
    out += list(rng.integers(n, size=self.batch_size - len(out)))
    return np.asarray(out, np.int64)


def gac_class_probabilities(
  counts, groups, *, rho: float = 0.9999, lam: float = 1e-5
) -> list[np.ndarray]:
  r"""GAC's within-group class probabilities (paper 004, appendix).

  Group :math:`V_i` gets one :math:`\beta_i` from its own imbalance, and
  class :math:`j \in V_i` the class-balanced term of Cui et al.,
  normalised in the group:

  .. math::
    \beta_i = \min\big(\rho + \lambda \ln(N^i_{max} / N^i_{min}),
    1 - 10^{-12}\big), \quad
    p_j = \frac{1 - \beta_i}{1 - \beta_i^{N_j}}, \quad
    P_j = p_j / \textstyle\sum_{k \in V_i} p_k

  The appendix names :math:`N^i_{min}` (the smallest class of the group),
  :math:`\rho = 0.9999` and :math:`\lambda`, but its formula for
  :math:`\beta_i` is illegible in our copy; the form above is the
  per-group version of the published sampler's per-class rule
  (:math:`\beta_j = \rho + \lambda \delta_j`, :math:`\delta_j` the
  normalised log-imbalance), so a more imbalanced group is re-balanced
  harder. Classes without images get 0.

  Returns:
    One ``[len(group)]`` array per group, in the group's class order.
  """
  counts = np.asarray(counts, np.float64)
  out = []
  for classes in groups:
    n = counts[list(classes)]
    seen = n[n > 0]
    if not len(seen):
      raise InputError(f"group {list(classes)} has no training image.")
    beta = min(rho + lam * np.log(seen.max() / seen.min()), 1 - 1e-12)
    p = np.where(
      n > 0, (1 - beta) / (1 - np.power(beta, np.maximum(n, 1))), 0.0
    )
    out.append(p / p.sum())
  return out


def gac_batches(
  labels,
  groups,
  *,
  batch_size: int,
  seed: int,
  fraction: float = 0.1,
  rho: float = 0.9999,
  lam: float = 1e-5,
  class_names: Sequence[str] | None = None,
) -> grain.MapDataset:
  """Group-Aware Completion sampler (GBG, paper 004), fixed batch size.

  Each batch draws ``b - G m`` images uniformly, ``m = ceil(fraction b)``
  (a tenth of the batch). Every group with no image among them is topped
  up with ``m`` images of its own classes (class by
  :func:`gac_class_probabilities`, then a uniform image of that class), and
  the remaining slots are uniform again: every group is in every batch.
  """
  labels = _check_labels(labels)
  groups = validate_groups(groups, labels.shape[1], class_names)
  per_group = int(np.ceil(fraction * batch_size))
  if per_group * len(groups) > batch_size:
    raise InputError(
      f"{len(groups)} groups x {per_group} do not fit a batch "
      f"of {batch_size}."
    )
  probs = gac_class_probabilities(labels.sum(0), groups, rho=rho, lam=lam)
  picks = []
  for classes, p in zip(groups, probs):
    cls = np.asarray(classes)[p > 0]
    picks.append(_ClassThenImage(cls, p[p > 0], _members(labels, cls)))
  fn = _GroupAwareCompletion(
    labels, groups, batch_size, per_group, seed, tuple(picks)
  )
  idx = grain.MapDataset.range(_INFINITE_STEPS).map_with_index(fn)
  return idx.map(_AttachLabels(labels))


def host_slice(
  ds: grain.MapDataset, *, process_index: int, process_count: int
) -> grain.MapDataset:
  """This host's contiguous rows of every batch (the global batch is the
  concatenation over hosts, as ``jax.make_array_from_process_local_data``
  expects). Each row keeps its position in the global batch as ``"slot"``,
  so its augmentation is the one it gets on a single host."""
  return ds.map(_HostRows(process_index, process_count))


@dataclasses.dataclass(frozen=True)
class _HostRows:
  index: int
  count: int

  def __call__(self, batch: dict) -> dict:
    b = len(batch["index"])
    if b % self.count:
      raise InputError(f"batch {b} does not split over {self.count} hosts.")
    lo, hi = self.index * b // self.count, (self.index + 1) * b // self.count
    out = {k: (v[lo:hi] if np.ndim(v) else v) for k, v in batch.items()}
    return {**out, "slot": np.arange(lo, hi)}
