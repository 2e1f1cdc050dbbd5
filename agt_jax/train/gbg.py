"""GBG (paper 004): class groups trained as a multi-objective problem.

One loss per group each step, the ``[G, D]`` matrix of the groups'
gradients with respect to the shared encoder, MGDA's min-norm weights
``alpha`` (Eq. 11) and the update along ``sum_g alpha_g grad L_g`` (Eq. 12).
The head is not shared between groups: each row of the classifier (one per
class) is updated by its own group's gradient.

The encoder runs forward once; the ``G`` encoder gradients are one batched
(``vmap``) pullback of the ``G`` feature cotangents, so ``G`` is a static
shape and the step compiles once.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from jax.flatten_util import ravel_pytree

from agt_jax import grouping, methods, mgda, models
from agt_jax.data import samplers
from agt_jax.models.weights import load_init
from agt_jax.train import steps
from agt_jax.train.fit import run_phase
from agt_jax.train.steps import State, _norm

__all__ = ["MOOOptions", "group_losses", "moo_step"]

MOO = ("mgda", "mean", "per_class")
OBJECTIVES = ("bce", "softmax")
REDUCTIONS = ("mean", "sum")


@dataclasses.dataclass(frozen=True)
class MOOOptions:
  """Static options of :func:`moo_step`.

  Attributes:
    groups: the class groups (a partition of the classes).
    objective: ``"bce"`` (multi-label, ODIR: ``L_g = mean_n sum_{c in g}
      BCE(z_nc, y_nc)``) or ``"softmax"`` (single-label, CIFAR: softmax
      cross-entropy averaged over the batch's images of group ``g``).
    moo: ``"mgda"`` (Eq. 11), ``"mean"`` (``alpha_g = 1/G``, Table 6's
      "average" merge without MOO) or ``"per_class"`` (MGDA with every class
      its own objective, Table 6's "MOO" without grouping).
    normalizer: scale of each gradient before MGDA (:func:`agt_jax.mgda.
      gradient_normalizers`); the paper's Eq. 11 uses none (``"none"``),
      GBG's published code ``"loss+"``.
    group_loss: ``"mean"`` (the paper's "average strategy": a group's
      gradient is the mean of its classes') or ``"sum"`` (the published
      code; a group's gradient grows with its size); ``bce`` only.
  """

  groups: tuple[tuple[int, ...], ...]
  objective: str = "bce"
  moo: str = "mgda"
  normalizer: str = "none"
  group_loss: str = "mean"  # see group_losses' reduction

  def __post_init__(self):
    if self.objective not in OBJECTIVES:
      raise ValueError(
        f"objective must be one of {OBJECTIVES}, got " f"{self.objective!r}."
      )
    if self.moo not in MOO:
      raise ValueError(f"moo must be one of {MOO}, got {self.moo!r}.")
    if self.group_loss not in REDUCTIONS:
      raise ValueError(
        f"group_loss must be one of {REDUCTIONS}, got {self.group_loss!r}."
      )

  @property
  def objectives(self) -> tuple[tuple[int, ...], ...]:
    """The groups MGDA balances (one per class for ``per_class``)."""
    if self.moo == "per_class":
      return tuple((c,) for g in self.groups for c in sorted(g))
    return self.groups


def group_losses(
  logits, labels, member, *, objective: str = "bce", reduction: str = "mean"
):
  r"""Per-group losses ``[G]``.

  ``"bce"``, ``reduction="mean"``: :math:`L_g = \frac1N \sum_n
  \frac{1}{|g|} \sum_{c \in g} \mathrm{BCE}(z_{nc}, y_{nc})`, the mean
  of the group's class losses (paper 004, Alg. 1 and §3: a group's gradient
  is the average of its classes' gradients). ``reduction="sum"`` drops the
  :math:`1/|g|` (GBG's published code), so :math:`\sum_g L_g` is the plain
  multi-label loss. ``"softmax"``: labels are class ids ``[N]``;
  :math:`L_g` is the mean softmax cross-entropy over the images whose class
  is in ``g`` (0 when the batch has none; the GAC sampler prevents that).

  Args:
    logits: ``[N, C]``.
    labels: ``[N, C]`` binary (``bce``) or ``[N]`` int (``softmax``).
    member: ``[G, C]`` from :func:`membership`.
    objective: ``"bce"`` or ``"softmax"``.
    reduction: ``"mean"`` or ``"sum"`` over a group's classes (``bce``).
  """
  if reduction not in REDUCTIONS:
    raise ValueError(
      f"reduction must be one of {REDUCTIONS}, got {reduction!r}."
    )
  if objective == "bce":
    per = optax.sigmoid_binary_cross_entropy(logits, labels)  # [N, C]
    total = jnp.einsum("nc,gc->g", per, member) / logits.shape[0]
    if reduction == "mean":
      total = total / jnp.maximum(member.sum(1), 1.0).astype(total.dtype)
    return total
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  in_group = member[:, labels]  # [G, N]
  return (in_group @ ce) / jnp.maximum(in_group.sum(1), 1.0)


def _labels(labels, objective):
  """Binary ``[N, C]`` float labels for ``bce``; class ids ``[N]`` for
  ``softmax`` (one-hot rows are turned into ids)."""
  if objective == "bce":
    return labels.astype(jnp.float32)
  return jnp.argmax(labels, -1) if labels.ndim == 2 else labels


def _moo_weights(flat, losses, options: MOOOptions) -> jax.Array:
  """``alpha [G]``: equal weights (``moo=mean``) or MGDA's min-norm weights
  of the (normalised) group gradients ``flat [G, D]``; constants for
  autodiff."""
  g = flat.shape[0]
  if options.moo == "mean":
    alpha = jnp.full((g,), 1.0 / g, flat.dtype)
  else:
    scale = mgda.gradient_normalizers(flat, losses, kind=options.normalizer)
    alpha, _ = mgda.min_norm_weights(flat / jnp.maximum(scale, 1e-12)[:, None])
  return jax.lax.stop_gradient(alpha)


def _cosines(flat, alpha):
  """Each objective's gradient against the update direction and against
  the plain (unweighted) batch gradient: paper 004's Fig. 1 diagnostic."""
  update, plain = alpha @ flat, flat.sum(0)
  norms = jnp.linalg.norm(flat, axis=1)
  cos_update = (flat @ update) / jnp.maximum(
    norms * jnp.linalg.norm(update), 1e-12
  )
  cos_batch = (flat @ plain) / jnp.maximum(
    norms * jnp.linalg.norm(plain), 1e-12
  )
  return cos_update, cos_batch


def moo_step(
  state: State, batch: dict, *, model, tx, options: MOOOptions
) -> tuple[State, dict]:
  """One GBG update (paper Algorithm 2) on a one-head model
  (:class:`agt_jax.models.Student`: ``params = {"encoder", "head"}``).

  Returns metrics with ``alpha [G]`` (the weights of the update) and
  ``group_loss [G]``; ``loss`` is :math:`\\sum_g L_g`.
  """
  objectives = options.objectives
  c = model.num_classes
  member = jnp.asarray(grouping.membership(objectives, c))
  labels = _labels(batch["labels"], options.objective)
  params = state["params"]
  head = nn.Dense(c)

  def encode(enc_params):
    variables = {"params": enc_params}
    if "encoder" in state["batch_stats"]:
      variables["batch_stats"] = state["batch_stats"]["encoder"]
    feats, updates = model.encoder.apply(
      variables, batch["image"], train=True, mutable=["batch_stats"]
    )
    return feats, updates.get("batch_stats", {})

  def losses_of(feats, head_params):
    logits = head.apply({"params": head_params}, feats)
    # bfloat16 compute -> float32 losses; float64 (tests) stays float64.
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    return group_losses(
      logits,
      labels,
      member,
      objective=options.objective,
      reduction=options.group_loss,
    )

  feats, pull_encoder, enc_stats = jax.vjp(
    encode, params["encoder"], has_aux=True
  )
  losses, pull_losses = jax.vjp(losses_of, feats, params["head"])
  g = len(objectives)
  d_feats, d_head = jax.vmap(pull_losses)(jnp.eye(g, dtype=losses.dtype))
  (enc_grads,) = jax.vmap(pull_encoder)(d_feats)  # leading axis G
  flat = jax.vmap(lambda t: ravel_pytree(t)[0])(enc_grads)

  alpha = _moo_weights(flat, losses, options)
  cos_update, cos_batch = _cosines(flat, alpha)
  grads = {
    "encoder": jax.tree.map(
      lambda x: jnp.tensordot(alpha, x, axes=1), enc_grads
    ),
    # Row c of the head (kernel column c, bias c) from its group's loss.
    "head": jax.tree.map(
      lambda x: jnp.einsum("gc,g...c->...c", member, x), d_head
    ),
  }
  stats = (
    {**state["batch_stats"], "encoder": enc_stats}
    if enc_stats
    else state["batch_stats"]
  )
  new_state, deltas = steps.apply_updates(state, grads, stats, tx=tx)
  new_params = new_state["params"]
  metrics = {
    "loss": losses.sum(),
    "group_loss": losses,
    "alpha": alpha,
    "cos_update": cos_update,
    "cos_batch": cos_batch,
    "grad_norm": _norm(grads),
    "param_norm": _norm(new_params),
    "update_norm": _norm(deltas),
  }
  return new_state, metrics


def model(config, phase: str, groups, num_classes: int):
  return models.Student(
    models.make_encoder(config.model, dtype=models.DTYPES[config.dtype]),
    num_classes=num_classes,
  )


def train(config, data, groups, ctx) -> dict:
  """GBG (paper 004, Algorithm 2): one model, every group's loss each step,
  combined by MGDA's weights, on GAC batches."""
  model = models.Student(ctx.encoder, num_classes=len(data.names))
  tx = steps.adam(config.lr, config.b1, config.b2, config.weight_decay)
  state = steps.init_state(
    model, tx, (config.crop, config.crop, 3), config.seed
  )
  if config.init:
    state = load_init(config.init, state)
  options = MOOOptions(
    groups=groups,
    objective=methods.objective(config),
    moo=config.moo,
    normalizer=config.moo_normalizer,
    group_loss=config.gbg_group_loss,
  )

  trained = run_phase(
    "gbg",
    model=model,
    step_fn=functools.partial(moo_step, model=model, tx=tx, options=options),
    state=state,
    batches=samplers.gac_batches(
      data.y_fit,
      groups,
      batch_size=config.batch_size,
      seed=config.seed,
      fraction=config.gac_fraction,
    ),
    config=config,
    data=data,
    mesh=ctx.mesh,
    workdir=ctx.workdir,
    resume=ctx.resume,
    total_steps=config.teacher_steps,
  )
  trained.selection["schedule"] = f"gbg ({config.moo})"
  trained.selection["objectives"] = [
    list(map(int, g)) for g in options.objectives
  ]
  return {"gbg": trained}
