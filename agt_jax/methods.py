"""The single source of method names: teacher losses, re-weighting rules,
KD readings and transfer losses, each one spec in one table.

Config validation, the steps, the loss options' checks, the re-weighting
line of ``results.json``, the collapse message and the method table of
``docs/methods.md`` all read these specs; nothing else compares a method's
name. Adding a teacher loss is a function (in ``agt_jax.losses`` or your own
module) plus one :func:`register` call::

  from agt_jax import methods

  def my_loss(logits, labels, options, **_):
    per = optax.sigmoid_binary_cross_entropy(logits, labels)
    return per.sum() / labels.shape[0], jnp.ones(logits.shape[-1]), None

  methods.register(methods.TEACHER_LOSSES,
                   methods.TeacherLoss("mine", my_loss, "my BCE"))
  # now --set loss=mine (or Config(loss="mine")) trains with it

Trainers are resolved the same way from ``agt_jax.train.trainers`` (kept
there so that this module, imported by the config, loads no trainer).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from agt_jax import losses


def objective(config) -> str:
  """The loss family: softmax cross-entropy on the single-label datasets
  (CIFAR100-LT, APTOS 2019, ISIC 2018, AIROGS), per-class BCE on the
  multi-label ones (``config.objective`` overrides ``auto``)."""
  if config.objective != "auto":
    return config.objective
  from agt_jax.data.registry import SINGLE_LABEL

  return "softmax" if config.dataset in SINGLE_LABEL else "bce"


class Registry(dict):
  """``name -> spec``; ``what`` names the kind in error messages."""

  def __init__(self, what: str, specs=()):
    super().__init__()
    self.what = what
    for s in specs:
      self[s.name] = s

  def get_spec(self, name: str):
    if name not in self:
      raise ValueError(
        f"{self.what} must be one of {tuple(self)}, got " f"{name!r}."
      )
    return self[name]

  def names(self) -> tuple[str, ...]:
    return tuple(self)


def register(registry: Registry, spec, *, replace: bool = False):
  """Adds ``spec`` under ``spec.name`` (refuses to shadow one unless
  ``replace``); returns it."""
  if spec.name in registry and not replace:
    raise ValueError(f"{registry.what} {spec.name!r} is already registered.")
  registry[spec.name] = spec
  return spec


# -- re-weighting rules (the AGT negative weights w_j) ------------------------


def _feedback_row(loss_state: dict, options, group):
  """The statistics the active group reads (its own row with
  ``rw_stats="group"``)."""
  state = losses.FeedbackState(**loss_state)
  if options.rw_stats == "group":
    state = jax.tree.map(lambda x: x[group], state)
  return state


def _feedback_store(loss_state: dict, new, options, group) -> dict:
  """Writes the active group's updated row back (only that row changes)."""
  if options.rw_stats != "group":
    return new._asdict()
  return jax.tree.map(
    lambda full, row: full.at[group].set(row),
    losses.FeedbackState(**loss_state),
    new,
  )._asdict()


def _feedback_weights(logits, labels, options, loss_state, group):
  return losses.feedback_reweight_weights(
    _feedback_row(loss_state, options, group), beta=options.beta
  )


def _feedback_bce(logits, labels, options, loss_state, group):
  # Weights from the statistics before this step; the statistics are those
  # of the (ensemble) logits, weighted as the loss weights them.
  w = _feedback_weights(logits, labels, options, loss_state, group)
  per, new = losses.feedback_reweighted_bce(
    logits,
    labels,
    _feedback_row(loss_state, options, group),
    beta=options.beta,
    decay=options.decay,
  )
  return per, w, _feedback_store(loss_state, new, options, group)


def _feedback_init(options, num_classes: int) -> dict:
  state = losses.feedback_reweight_init(num_classes)
  if options.rw_stats == "group":  # one row per group
    g = len(options.groups)
    state = jax.tree.map(lambda x: jnp.zeros((g, *x.shape), x.dtype), state)
  return state._asdict()


@dataclasses.dataclass(frozen=True)
class Reweighting:
  """A rule for the `[C]` weights on the negative BCE terms.

  ``weights(logits, labels, options, loss_state, group) -> w``;
  ``weighted_bce(...) -> ([N, C] loss, w, new loss_state)``; ``init``
  builds the carried statistics of a stateful rule; ``describe(config)`` is
  the line in ``results.json``; ``collapse_cause`` the likely cause named
  when a teacher trained with it calls every class positive.
  """

  name: str
  weights: Callable
  weighted_bce: Callable
  describe: Callable[[Any], str]
  description: str = ""
  init: Callable | None = None
  per_group_stats: bool = False  # supports rw_stats="group"
  collapse_cause: Callable[[Any], str | None] = lambda config: None


def _batch_rule(
  name, weights, describe, description, collapse_cause=None
) -> Reweighting:
  """A rule whose weights ``weights(logits, labels, options)`` come from
  this batch alone: the re-weighted BCE with them, the state untouched."""

  def weighted_bce(logits, labels, options, loss_state, group):
    w = weights(logits, labels, options)
    return losses.reweighted_bce(logits, labels, w), w, loss_state

  return Reweighting(
    name,
    weights=lambda z, y, o, state, group: weights(z, y, o),
    weighted_bce=weighted_bce,
    describe=describe,
    description=description,
    collapse_cause=collapse_cause or (lambda config: None),
  )


REWEIGHTS = Registry(
  "reweight",
  [
    _batch_rule(
      "gradient",
      lambda z, y, o: losses.gradient_reweight_weights(z, y, beta=o.beta),
      describe=lambda c: f"paper per-batch gradient rule, Eqs. 1-4 (beta "
      f"{c.beta:g})",
      description="the paper's Eqs. 1-4 on this batch's gradients "
      "(a ratchet for beta >= 1: docs/reweighting.md)",
      collapse_cause=lambda c: (
        f"the paper's per-batch re-weighting (reweight=gradient, beta="
        f"{c.beta:g}) runs every class towards positive for beta "
        ">= 1 (docs/reweighting.md); rerun with the default "
        "--set reweight=none or the stable --set reweight=feedback"
      )
      if c.beta >= 1
      else None,
    ),
    Reweighting(
      "feedback",
      weights=_feedback_weights,
      weighted_bce=_feedback_bce,
      init=_feedback_init,
      per_group_stats=True,
      description="the same mapping fed with running statistics of the "
      "weighted negative gradient (stable; `rw_stats=group`: one row per "
      "group)",
      describe=lambda c: f"fed-back gradient statistics (beta {c.beta:g}, "
      f"decay {c.rw_decay:g})"
      + (", one row of statistics per group" if c.rw_stats == "group" else ""),
    ),
    _batch_rule(
      "count",
      lambda z, y, o: losses.count_reweight_weights(y, beta=o.beta),
      describe=lambda c: f"batch-count rule, Table 4 (beta {c.beta:g})",
      description="positive/negative label counts of the batch (Table 4)",
      collapse_cause=lambda c: (
        "batch-count re-weighting (reweight=count) removes the "
        "negatives' pull; rerun with the default --set reweight=none"
      ),
    ),
    _batch_rule(
      "none",
      lambda z, y, o: jnp.ones((z.shape[-1],), z.dtype),
      describe=lambda c: "no re-weighting (plain BCE on every head)",
      description="no re-weighting: plain BCE on every head",
    ),
  ],
)


# -- teacher losses -----------------------------------------------------------


def _ones(logits):
  return jnp.ones((logits.shape[-1],), logits.dtype)


def _agt(logits, labels, options, *, loss_state, group, **_):
  per, w, loss_state = REWEIGHTS[options.reweight].weighted_bce(
    logits, labels, options, loss_state, group
  )
  if options.objective == "group":  # Eq. 14: the active group's classes
    # Imported here: the registry stays light (grouping needs sklearn).
    from agt_jax.grouping import membership

    member = membership(options.groups, labels.shape[-1])
    per = per * jnp.asarray(member)[group].astype(per.dtype)
  return per.sum() / labels.shape[0], w, loss_state


def _ride(logits, labels, options, *, aux, loss_state, group, **_):
  rw = REWEIGHTS[options.reweight]
  if rw.init is not None:  # a stateful rule also updates its statistics
    _, w, loss_state = rw.weighted_bce(
      logits, labels, options, loss_state, group
    )
  else:
    w = rw.weights(logits, labels, options, loss_state, group)
  return (
    losses.ride_multilabel_loss(
      aux["expert_logits"],
      labels,
      jnp.asarray(options.class_counts),
      negative_weights=w,
    ),
    w,
    loss_state,
  )


def _focal(logits, labels, options, *, loss_state, **_):
  return (
    losses.sigmoid_focal_loss(logits, labels, alpha=0.25, gamma=2.0).mean(),
    _ones(logits),
    loss_state,
  )


def _eqlv2(logits, labels, options, *, loss_state, **_):
  per, new = losses.eqlv2_loss(logits, labels, losses.EQLv2State(**loss_state))
  return per.sum() / labels.shape[0], _ones(logits), new._asdict()


def _bags(logits, labels, options, *, aux, loss_state, step, **_):
  key = jax.random.fold_in(jax.random.key(options.seed), step)
  per_c, per_o = losses.bags_loss(
    logits, aux["others_logits"], labels, options.groups, key=key
  )
  return per_c.sum() + per_o.sum(), _ones(logits), loss_state


def _counts(options):
  return jnp.asarray(options.class_counts, jnp.float32)


def _ib(logits, labels, options, *, features, loss_state, step, **_):
  ib = losses.influence_balanced_loss(
    logits, labels, features.astype(jnp.float32), _counts(options)
  )
  bce = optax.sigmoid_binary_cross_entropy(logits, labels)
  loss = jnp.where(
    step >= options.ib_start_step, ib.sum(-1).mean(), bce.sum(-1).mean()
  )
  return loss, _ones(logits), loss_state


def _class_balanced(gamma):
  def fn(logits, labels, options, *, loss_state, **_):
    per = losses.class_balanced_loss(
      logits, labels, _counts(options), gamma=gamma
    )
    return (
      per.sum() / jnp.maximum(labels.sum(), 1.0),
      _ones(logits),
      loss_state,
    )

  return fn


def _db(logits, labels, options, *, loss_state, **_):
  per = losses.distribution_balanced_loss(
    logits, labels, _counts(options), options.num_examples
  )
  return per.mean(), _ones(logits), loss_state


@dataclasses.dataclass(frozen=True)
class TeacherLoss:
  """A teacher loss with its published reduction.

  ``fn(logits, labels, options, *, features, aux, loss_state, step, group)
  -> (scalar, w [C], new loss_state)``: ``logits`` are those the loss sees
  (already shifted under prior correction), ``w`` the AGT negative weights
  (ones where unused), ``options`` the step's ``LossOptions``.
  ``reweightable``: it takes ``reweight`` (else the rule must be ``none``
  in effect: it is ignored and the results line says so). ``init(options,
  C)``: its own carried statistics. ``needs``: the ``LossOptions`` fields
  it reads (``class_counts``, ``num_examples``, ``groups``). ``head(config)``:
  extra ``models.Teacher`` arguments. ``joint``: every head trains every
  step (no active group). ``shared_only``: refused with ``teacher=multi``.
  ``check(config)``: a config error message or None.
  """

  name: str
  fn: Callable
  description: str
  reweightable: bool = False
  init: Callable | None = None
  needs: tuple[str, ...] = ()
  head: Callable[[Any], dict] = lambda config: {}
  joint: bool = False
  shared_only: bool = False
  group_objective: bool = False  # takes teacher_objective="group" (Eq. 14)
  check: Callable[[Any], str | None] = lambda config: None


def _ride_check(config):
  if config.experts < 2:
    return f"loss='ride' needs experts >= 2, got {config.experts}."
  return None


TEACHER_LOSSES = Registry(
  "loss",
  [
    TeacherLoss(
      "agt",
      _agt,
      "the paper's BCE, negatives weighted per " "`reweight` (Eq. 4)",
      reweightable=True,
      group_objective=True,
    ),
    TeacherLoss(
      "focal", _focal, "focal loss (alpha 0.25, gamma 2; mean " "over N*C)"
    ),
    TeacherLoss(
      "cb",
      _class_balanced(0.0),
      "class-balanced BCE (effective "
      "number, beta 0.9999; sum over positive labels)",
      needs=("class_counts",),
    ),
    TeacherLoss(
      "cb_focal",
      _class_balanced(2.0),
      "class-balanced focal " "(gamma 2)",
      needs=("class_counts",),
    ),
    TeacherLoss(
      "db",
      _db,
      "distribution-balanced loss (COCO configuration; " "mean over N*C)",
      needs=("class_counts", "num_examples"),
    ),
    TeacherLoss(
      "eqlv2",
      _eqlv2,
      "EQLv2 (gradient statistics carried as " "state; sum / N)",
      init=lambda o, c: losses.eqlv2_init(c)._asdict(),
    ),
    TeacherLoss(
      "ib",
      _ib,
      "influence-balanced (plain BCE until ib_start, " "then IB)",
      needs=("class_counts",),
    ),
    TeacherLoss(
      "ride",
      _ride,
      "RIDE multi-expert heads; `reweight` weights "
      "the negatives (reweight=gradient: Ours + RIDE)",
      reweightable=True,
      needs=("class_counts",),
      head=lambda c: {"experts": c.experts, "expert_scale": 30.0},
      shared_only=True,
      check=_ride_check,
    ),
    TeacherLoss(
      "bags",
      _bags,
      "BAGS: heads with an 'others' output, others "
      "subsampled 8:1; all heads every step",
      needs=("groups",),
      head=lambda c: {"others": True},
      joint=True,
      shared_only=True,
    ),
  ],
)


def loss_state_init(options, num_classes: int) -> dict | None:
  """The explicit statistics the teacher's loss carries (its own, or its
  stateful re-weighting rule's), else None."""
  spec = TEACHER_LOSSES.get_spec(options.loss)
  if spec.init is not None:
    return spec.init(options, num_classes)
  rw = REWEIGHTS.get_spec(options.reweight)
  if spec.reweightable and rw.init is not None:
    return rw.init(options, num_classes)
  return None


# -- KD readings (the student's distillation term) ----------------------------


def _kd_cb(logits, teacher_logits, labels, class_counts, options):
  return losses.class_balanced_kd(
    logits,
    teacher_logits,
    labels,
    class_counts,
    temperature=options.temperature,
    direction=options.direction,
    scale=options.scale,
  ).mean()


def _kd_eq7(logits, teacher_logits, labels, class_counts, options):
  return (
    losses.eq7_class_balanced_kd(
      logits,
      teacher_logits,
      labels,
      class_counts,
      temperature=options.temperature,
      direction=options.direction,
      scale=options.scale,
    )
    .sum(-1)
    .mean()
  )


def _kd_plain(logits, teacher_logits, labels, class_counts, options):
  return (
    losses.binary_kl_divergence(
      logits,
      teacher_logits,
      temperature=options.temperature,
      direction=options.direction,
      scale=options.scale,
    )
    .sum(-1)
    .mean()
  )


def _kd_subset(logits, teacher_logits, labels, class_counts, options):
  lam = losses.subset_kd_weights(options.groups, class_counts)
  return (
    (
      lam
      * losses.binary_kl_divergence(
        logits,
        teacher_logits,
        temperature=options.temperature,
        direction=options.direction,
        scale=options.scale,
      )
    )
    .sum(-1)
    .mean()
  )


@dataclasses.dataclass(frozen=True)
class KDReading:
  """``fn(logits, teacher_logits, labels, class_counts, options) -> scalar``
  (``options`` the step's ``KDOptions``)."""

  name: str
  fn: Callable
  description: str
  needs_groups: bool = False


KD = Registry(
  "kd",
  [
    KDReading(
      "cb",
      _kd_cb,
      "one class-balanced weight per image on every "
      "class's KL (the per-sample reading of §3.5)",
    ),
    KDReading(
      "eq7",
      _kd_eq7,
      "Eq. 7 as written: each positive class's KL "
      "weighted by its share of the image's sampling probability",
    ),
    KDReading("plain", _kd_plain, "unweighted binary KL"),
    KDReading(
      "subset",
      _kd_subset,
      "KL weighted per class by its teacher " "subset's size",
      needs_groups=True,
    ),
    KDReading("none", lambda *a: jnp.zeros(()), "no distillation (BCE only)"),
  ],
)


# -- transfer losses (paper 001's TransferNet) ---------------------------------


@dataclasses.dataclass(frozen=True)
class TransferLoss:
  """``fn(logits, labels, options) -> [N, C]`` (``options`` the step's
  ``TransferOptions``)."""

  name: str
  fn: Callable
  description: str
  needs_counts: bool = False


TRANSFER_LOSSES = Registry(
  "transfer_loss",
  [
    TransferLoss(
      "bce",
      lambda z, y, o: optax.sigmoid_binary_cross_entropy(z, y),
      "BCE (mean over N*C)",
    ),
    TransferLoss(
      "focal",
      lambda z, y, o: optax.sigmoid_focal_loss(
        z, y, alpha=o.focal_alpha, gamma=o.focal_gamma
      ),
      "focal (Task 2: alpha 0.5, gamma 1)",
    ),
    TransferLoss(
      "cb",
      lambda z, y, o: losses.class_balanced_positive_bce(
        z, y, jnp.asarray(o.class_counts, jnp.float32), beta=o.cb_beta
      ),
      "class-balanced BCE on the positive terms (beta 0.999)",
      needs_counts=True,
    ),
  ],
)


def markdown_table(registry: Registry) -> list[str]:
  """``| name | what |`` lines of one registry."""
  return ["| name | what |", "|---|---|"] + [
    f"| `{s.name}` | {s.description} |" for s in registry.values()
  ]
