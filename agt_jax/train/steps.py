"""Pure, module-level train and eval steps.

State is a plain pytree ``{"params", "batch_stats", "opt_state", "step"}``.
Static dependencies (model, optimiser, loss options) are bound with
``functools.partial`` as keyword-only arguments; the result is jitted once with
the state donated. The active group is ``batch["group"]``, a traced int32, so
one compiled program serves every group.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from agt_jax import losses, methods
from agt_jax.models import head_name

State = dict


@dataclasses.dataclass(frozen=True)
class LossOptions:
  """The multi-label loss of the (teacher) step.

  ``loss="agt"`` is the paper's BCE with negative terms weighted per
  ``reweight`` (Table 3/4 axes). The peers share the same step, each with its
  published reduction: ``focal`` (alpha 0.25, gamma 2; mean over N*C),
  ``cb``/``cb_focal`` (effective number, beta 0.9999; sum over positive
  labels), ``db`` (COCO configuration; mean over N*C), ``eqlv2`` (statistics
  carried in ``state["loss_state"]``; sum / N), ``ib`` (plain BCE until step
  ``ib_start_step``, then influence-balanced; sum over classes, mean over N),
  ``ride`` (multi-expert heads; ``reweight`` weights the negatives, so
  ``reweight="gradient"`` is "Ours + RIDE") and ``bags`` (heads with an
  "others" output; others subsampled 8:1 with a key from ``seed`` and the
  step). The class-count based ones need the training split's
  ``class_counts`` (and ``num_examples`` for ``db``); ``bags`` needs the
  ``groups``.
  """

  reweight: str = "gradient"  # gradient | feedback | count | none
  beta: float = 2.0
  decay: float = 0.99  # reweight="feedback": moving-average decay
  loss: str = "agt"
  class_counts: tuple | None = None
  num_examples: int | None = None
  groups: tuple | None = None
  ib_start_step: int = 0
  seed: int = 0
  # `[G][C]` log-odds shift of the group-mixed sampler
  # (samplers.prior_shift): with it every logit enters the loss as
  # ``z + shift[group]``, so ``z`` estimates natural-prior log-odds.
  logit_shift: tuple | None = None
  # reweight="feedback": one row of statistics for every group ("group",
  # updated only in its group's batches) or one for all ("global").
  rw_stats: str = "global"
  # "all": every class's loss (§3.4.3) | "group": only the active group's
  # classes enter (Eq. 14; loss="agt").
  objective: str = "all"

  def __post_init__(self):
    if self.rw_stats not in ("global", "group"):
      raise ValueError(
        f"rw_stats must be 'global' or 'group', got " f"{self.rw_stats!r}."
      )
    if self.rw_stats == "group" and not self.groups:
      raise ValueError("rw_stats='group' needs the class groups.")
    if self.objective not in ("all", "group"):
      raise ValueError(
        f"objective must be 'all' or 'group', got {self.objective!r}."
      )
    if self.objective == "group" and not self.groups:
      raise ValueError("objective='group' needs the class groups.")
    spec = methods.TEACHER_LOSSES.get_spec(self.loss)
    methods.REWEIGHTS.get_spec(self.reweight)
    for need in spec.needs:
      if not getattr(self, need):
        raise ValueError(
          f"loss={self.loss!r} needs {need} (the training "
          "split's class counts, its size or the class "
          "groups)."
        )


@dataclasses.dataclass(frozen=True)
class KDOptions:
  kd: str = "cb"  # cb | eq7 | plain | subset | none
  temperature: float = 5.0
  gamma: float = 1.0
  direction: str = "teacher_student"
  # t2: KL x T^2 (Hinton); none: Eqs. 6-8 as written (no factor)
  scale: str = "t2"
  groups: tuple | None = None  # kd="subset": the teachers' class subsets

  def __post_init__(self):
    if methods.KD.get_spec(self.kd).needs_groups and not self.groups:
      raise ValueError(f"kd={self.kd!r} needs the teachers' class groups.")


@dataclasses.dataclass(frozen=True)
class TransferOptions:
  """The loss of a :class:`~agt_jax.models.TransferNet` (paper 001).

  ``bce``: BCE; ``focal``: ``optax.sigmoid_focal_loss`` (Task 2: alpha
  0.5, gamma 1); ``cb``: class-balanced BCE on the positive terms only
  (beta 0.999). Each is a mean over ``N * C``, as PyTorch's default.
  ``cam_entropy > 0`` adds ``w * (1 - H)`` with ``H`` the mean normalised
  entropy of the Grad-CAM maps of each image's positive classes (Task 4c;
  the paper reports it made maps more diffuse, which is what rewarding
  entropy does; a negative weight gives the focusing form). ``seed``
  draws the dropout masks, folded with the step (resumes are exact).
  """

  loss: str = "bce"
  focal_alpha: float = 0.5
  focal_gamma: float = 1.0
  cb_beta: float = 0.999
  class_counts: tuple | None = None
  cam_entropy: float = 0.0
  seed: int = 0

  def __post_init__(self):
    if (
      methods.TRANSFER_LOSSES.get_spec(self.loss).needs_counts
      and self.class_counts is None
    ):
      raise ValueError(
        f"loss={self.loss!r} needs the training " "class_counts."
      )


# -- optimisers ---------------------------------------------------------------


def _same_object_for_equal_arguments(fn):
  """Equal arguments give the same transformation object. Steps and
  ``init_state`` take ``tx`` as a static argument, so a new object per run
  made every later run in the process (the next method, fold or seed of an
  experiment) trace and compile them again; an optax transformation is
  immutable, so sharing it changes nothing else. Unhashable arguments (an
  array learning rate) build a new one."""
  cached = functools.lru_cache(maxsize=256)(fn)

  @functools.wraps(fn)
  def build(*args, **kwargs):
    try:
      hash((args, tuple(kwargs.items())))
    except TypeError:  # not a TypeError of ``fn``'s, which must surface once
      return fn(*args, **kwargs)
    return cached(*args, **kwargs)

  return build


@_same_object_for_equal_arguments
def adam(
  lr, b1: float, b2: float, weight_decay: float = 0.0
) -> optax.GradientTransformation:
  """Adam; with ``weight_decay > 0`` AdamW (decoupled decay, Loshchilov &
  Hutter 2019), the tuner's third knob. 0 is plain Adam, bit for bit."""
  if weight_decay:
    return optax.adamw(lr, b1=b1, b2=b2, weight_decay=weight_decay)
  return optax.adam(lr, b1=b1, b2=b2)


@_same_object_for_equal_arguments
def teacher_tx(
  num_groups: int,
  lr,
  *,
  b1: float = 0.9,
  b2: float = 0.99,
  weight_decay: float = 0.0,
) -> optax.GradientTransformationExtraArgs:
  """Adam for the encoder every step; Adam for head ``g`` only when group
  ``g`` is active.

  ``optax.partition`` routes each top-level parameter subtree (``encoder``,
  ``head_g0``, ...) to its own transform. A head's Adam is wrapped in
  ``optax.conditionally_mask`` on the traced ``group`` extra argument: when
  its group is inactive the inner Adam does not run at all, so the head's
  parameters, moments and count stay bit-identical (zeroing the gradient
  instead would keep moving it through momentum).
  """

  def head(g):
    return optax.conditionally_mask(
      adam(lr, b1, b2, weight_decay),
      lambda step, group, **_: group == g,
      forward_extra_args=True,
    )

  transforms = {"encoder": adam(lr, b1, b2, weight_decay)}
  transforms.update({head_name(g): head(g) for g in range(num_groups)})
  labels = {k: k for k in transforms}
  return optax.partition(transforms, labels)


@_same_object_for_equal_arguments
def joint_tx(
  lr, *, b1: float = 0.9, b2: float = 0.99, weight_decay: float = 0.0
) -> optax.GradientTransformationExtraArgs:
  """Adam over every parameter every step (heads trained jointly: BAGS, the
  multi-teacher baseline); accepts and ignores the ``group`` argument."""
  return optax.with_extra_args_support(adam(lr, b1, b2, weight_decay))


@_same_object_for_equal_arguments
def frozen_encoder_tx(
  tx: optax.GradientTransformation,
) -> optax.GradientTransformation:
  """``tx`` on every parameter but the ``encoder`` subtree, which gets
  ``optax.set_to_zero`` (no update, no optimiser state): a frozen-backbone
  run (paper 001, Task 1.2) with the same step functions."""

  def labels(params):
    return {k: "frozen" if k == "encoder" else "trained" for k in params}

  return optax.partition({"frozen": optax.set_to_zero(), "trained": tx}, labels)


def bind_static(
  jitted, fun, *, compiler_options=None, donate_argnums=(), **static
):
  """``jitted`` (a module-level ``jax.jit`` of ``fun`` whose ``static``
  arguments are static) with ``static`` bound: one compiled program per
  process for equal static values, however many runs ask for it. Values
  that cannot be hashed (a module holding a list or an array) get a jit of
  their own, compiled per call."""
  try:
    hash(tuple(static.values()))
  except TypeError:
    return jax.jit(
      functools.partial(fun, **static),
      compiler_options=compiler_options,
      donate_argnums=donate_argnums,
    )
  return functools.partial(jitted, **static)


@functools.cache
def _donating_jit(fun, static_argnames: tuple[str, ...]):
  return jax.jit(fun, static_argnames=static_argnames, donate_argnums=0)


def compiled_step(step_fn):
  """The jitted training step ``(state, batch, *extra) -> (state, metrics)``
  with its state donated.

  A ``functools.partial`` of a module-level step with keyword arguments
  only (``partial(teacher_step, model=..., tx=..., options=...)``) is
  compiled once per process for equal keywords: its arrays go in as
  inputs, everything else is static. So another run of the same shapes
  and options in the process (the next method, fold, seed or trial of an
  experiment) reuses the program instead of tracing it again. Any other
  callable (a closure) is jitted as given, once per call of this.
  """
  if isinstance(step_fn, functools.partial) and not step_fn.args:
    kw = step_fn.keywords
    static = {
      k: v for k, v in kw.items() if not isinstance(v, jax.Array | np.ndarray)
    }
    jitted = _donating_jit(step_fn.func, tuple(sorted(static)))
    dynamic = {k: v for k, v in kw.items() if k not in static}
    return functools.partial(
      bind_static(jitted, step_fn.func, donate_argnums=0, **static), **dynamic
    )
  return jax.jit(step_fn, donate_argnums=0)


def init_state(
  model,
  tx,
  image_shape: Sequence[int],
  seed: int,
  loss_state: dict | None = None,
) -> State:
  """``{"params", "batch_stats", "opt_state", "step"}`` (plus
  ``"loss_state"`` for stateful losses such as EQLv2)."""
  cpu = jax.default_backend() == "cpu"
  init = bind_static(
    _init_cpu if cpu else _init,
    _make_state,
    compiler_options=_INIT_OPTIONS if cpu else None,
    model=model,
    tx=tx,
    shape=tuple(image_shape),
  )
  state = init(jax.random.key(seed))
  if loss_state:
    state["loss_state"] = loss_state
  return state


def _make_state(key, *, model, tx, shape) -> State:
  variables = model.init(key, jnp.zeros((1, *shape), jnp.uint8), train=False)
  params = variables["params"]
  return {
    "params": params,
    "batch_stats": variables.get("batch_stats", {}),
    "opt_state": tx.init(params),
    "step": jnp.zeros((), jnp.int32),
  }


# One compiled program instead of every initialiser dispatched (and, on a
# first run, compiled) op by op; module-level, so another fold, seed or the
# student of the same shapes reuses it. The values are the eager ones (bit
# for bit on the convolutional encoders; ViT's normal draws within 4e-9). On
# CPU at LLVM level 1: a program run once gains nothing from level 2, which
# compiled it 2-5x slower (resnet_tiny 7.2 s -> 1.4 s), values bit-identical.
_STATIC = ("model", "tx", "shape")
_init = jax.jit(_make_state, static_argnames=_STATIC)
_INIT_OPTIONS = {"xla_backend_optimization_level": 1}
_init_cpu = jax.jit(
  _make_state, static_argnames=_STATIC, compiler_options=_INIT_OPTIONS
)


def initial_loss_state(options: LossOptions, num_classes: int) -> dict | None:
  """The explicit statistics a stateful loss carries (EQLv2, the feedback
  re-weighting), else None."""
  return methods.loss_state_init(options, num_classes)


def shift_logits(logits, options: LossOptions, group, aux=None):
  """``z + shift[group]`` (and the same for RIDE's expert logits) under
  prior correction; unchanged otherwise."""
  if options.logit_shift is None:
    return logits, aux
  shift = jnp.asarray(options.logit_shift, jnp.float32)[group]
  aux = dict(aux or {})
  if "expert_logits" in aux:
    aux["expert_logits"] = aux["expert_logits"] + shift
  return logits + shift, aux


# -- losses -------------------------------------------------------------------


def negative_weights(
  logits, labels, options: LossOptions, loss_state=None, group=None
):
  """AGT's `[C]` weights on the negative BCE terms, per ``reweight``
  (``feedback`` reads them from the carried ``loss_state``, the active
  group's row with ``rw_stats="group"``)."""
  return methods.REWEIGHTS.get_spec(options.reweight).weights(
    logits, labels, options, loss_state, group
  )


def teacher_loss_terms(logits, labels, options: LossOptions):
  """Per-element `[N, C]` loss and the re-weighting weights `[C]` of a
  rule whose weights come from this batch."""
  w = negative_weights(logits, labels, options)
  return losses.reweighted_bce(logits, labels, w), w


def teacher_loss(
  logits,
  labels,
  options: LossOptions,
  *,
  features=None,
  aux=None,
  loss_state=None,
  step=None,
  group=None,
):
  """``(scalar loss, w [C], new loss_state)`` with each loss's published
  reduction (``w`` is the AGT negative weight, ones where unused); the
  loss is ``methods.TEACHER_LOSSES[options.loss]``.

  ``logits`` are those the loss sees: already shifted by
  :func:`shift_logits` under prior correction.
  """
  return methods.TEACHER_LOSSES.get_spec(options.loss).fn(
    logits,
    labels,
    options,
    features=features,
    aux=aux,
    loss_state=loss_state,
    step=step,
    group=group,
  )


def _norm(tree) -> jax.Array:
  return optax.tree.norm(tree)


def apply_updates(
  state: State, grads, batch_stats, *, tx, **extra_args
) -> tuple[State, dict]:
  """The optimiser step every train step ends with: ``(new state, update
  deltas)``. ``extra_args`` go to ``tx.update`` (the active ``group`` of
  :func:`teacher_tx`)."""
  deltas, opt_state = tx.update(
    grads, state["opt_state"], state["params"], **extra_args
  )
  params = optax.apply_updates(state["params"], deltas)
  return {
    "params": params,
    "batch_stats": batch_stats,
    "opt_state": opt_state,
    "step": state["step"] + 1,
  }, deltas


# -- steps --------------------------------------------------------------------


def teacher_step(
  state: State, batch: dict, *, model, tx, options: LossOptions
) -> tuple[State, dict]:
  """One AGT teacher update (paper Algorithm 4, one mini-batch).

  The logits of **all** heads enter the loss, so inactive heads' logits still
  train the encoder (§3.4.1); the optimiser updates only the encoder and the
  active head. The loss is the paper's Eq. 4 summed over classes and averaged
  over the batch (a constant factor from the paper's double sum, which Adam
  is invariant to); the statistics ``pos/neg/w`` are over the global batch.
  """
  labels = batch["labels"].astype(jnp.float32)
  loss_state = state.get("loss_state")

  def loss_fn(params):
    (logits, features), updates = model.apply(
      {"params": params, "batch_stats": state["batch_stats"]},
      batch["image"],
      train=True,
      mutable=["batch_stats", "aux"],
    )
    aux = {k: v[0] for k, v in updates.get("aux", {}).items()}
    logits, aux = shift_logits(logits, options, batch["group"], aux)
    loss, w, new_loss_state = teacher_loss(
      logits,
      labels,
      options,
      features=features,
      aux=aux,
      loss_state=loss_state,
      step=state["step"],
      group=batch["group"],
    )
    return loss, (logits, w, updates, new_loss_state)

  (loss, (logits, w, updates, new_loss_state)), grads = jax.value_and_grad(
    loss_fn, has_aux=True
  )(state["params"])
  new_state, deltas = apply_updates(
    state, grads, updates["batch_stats"], tx=tx, group=batch["group"]
  )
  pos, neg = losses.gradient_ratio_stats(logits, labels)
  metrics = {
    "loss": loss,
    "group": batch["group"],
    "pos": pos,
    "neg": neg,
    "w": w,
    "grad_norm": _norm(grads),
    "param_norm": _norm(new_state["params"]),
    "update_norm": _norm(deltas),
  }
  if loss_state is not None:
    new_state["loss_state"] = new_loss_state
  return new_state, metrics


def plain_step(state: State, batch: dict, *, model, tx) -> tuple[State, dict]:
  """Plain multi-label BCE on a single-head model (the baseline; also the
  warm-up run whose features define relational groups)."""
  labels = batch["labels"].astype(jnp.float32)

  def loss_fn(params):
    (logits, _), updates = model.apply(
      {"params": params, "batch_stats": state["batch_stats"]},
      batch["image"],
      train=True,
      mutable=["batch_stats"],
    )
    loss = optax.sigmoid_binary_cross_entropy(logits, labels).sum(-1).mean()
    return loss, updates

  (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(
    state["params"]
  )
  new_state, _ = apply_updates(state, grads, updates["batch_stats"], tx=tx)
  params = new_state["params"]
  return (
    new_state,
    {"loss": loss, "grad_norm": _norm(grads), "param_norm": _norm(params)},
  )


def transfer_loss(logits, labels, options: TransferOptions):
  """``[N, C]`` per-element loss of ``options.loss``."""
  return methods.TRANSFER_LOSSES.get_spec(options.loss).fn(
    logits, labels, options
  )


def transfer_step(
  state: State, batch: dict, *, model, tx, options: TransferOptions
) -> tuple[State, dict]:
  """One update of a :class:`~agt_jax.models.TransferNet` (paper 001).

  The encoder's map is computed once; a frozen encoder's map is a
  constant (no backward pass through it; ``tx`` must not move it either,
  :func:`frozen_encoder_tx`). With ``cam_entropy`` the Grad-CAM maps are
  differentiated through, head and encoder (second order).
  """
  from agt_jax.models import transfer

  labels = batch["labels"].astype(jnp.float32)
  rng = jax.random.fold_in(jax.random.key(options.seed), state["step"])

  def loss_fn(params):
    fmap, updates = model.apply(
      {"params": params, "batch_stats": state["batch_stats"]},
      batch["image"],
      train=True,
      mutable=["batch_stats"],
      method=type(model).feature_map,
    )
    if model.freeze_encoder:
      fmap = jax.lax.stop_gradient(fmap)

    def head(m):
      return model.apply(
        {"params": params},
        m,
        train=True,
        rngs={"dropout": rng},
        method=type(model).from_map,
      )[0]

    aux = {}
    if options.cam_entropy:
      logits, cams = transfer.class_cams(fmap, head, labels.shape[1])
      pos = labels > 0
      ent = transfer.cam_entropy(cams, where=pos).sum() / jnp.maximum(
        pos.sum(), 1
      )
      aux["cam_entropy"] = ent
    else:
      logits = head(fmap)
    task = transfer_loss(logits, labels, options).mean()
    loss = task + options.cam_entropy * (1.0 - aux.get("cam_entropy", 1.0))
    return loss, ({"task_loss": task, **aux}, updates)

  (loss, (aux, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
    state["params"]
  )
  new_state, _ = apply_updates(state, grads, updates["batch_stats"], tx=tx)
  params = new_state["params"]
  return (
    new_state,
    {
      "loss": loss,
      **aux,
      "grad_norm": _norm(grads),
      "param_norm": _norm(params),
    },
  )


def student_step(
  state: State,
  batch: dict,
  teacher_variables: dict,
  *,
  model,
  teacher_model,
  tx,
  class_counts,
  options: KDOptions,
  teacher_offset=None,
) -> tuple[State, dict]:
  """One student update: ``L = BCE + gamma * KD`` (paper Eq. 8).

  The frozen teacher runs inside the same jitted step on the very augmented
  view the student sees (precomputed teacher logits would pin one crop per
  image and cost a second pass over the data); it is in eval mode and under
  ``stop_gradient``. ``teacher_offset`` (`[C]`, post-hoc prior
  correction) is subtracted from the teacher's logits, so the student
  distils natural-prior log-odds.
  """
  labels = batch["labels"].astype(jnp.float32)
  teacher_logits, _ = teacher_model.apply(
    teacher_variables, batch["image"], train=False
  )
  if teacher_offset is not None:
    teacher_logits = teacher_logits - teacher_offset
  teacher_logits = jax.lax.stop_gradient(teacher_logits)

  def loss_fn(params):
    (logits, _), updates = model.apply(
      {"params": params, "batch_stats": state["batch_stats"]},
      batch["image"],
      train=True,
      mutable=["batch_stats"],
    )
    bce = optax.sigmoid_binary_cross_entropy(logits, labels).sum(-1).mean()
    kd = methods.KD.get_spec(options.kd).fn(
      logits, teacher_logits, labels, class_counts, options
    )
    return bce + options.gamma * kd, (bce, kd, updates)

  (loss, (bce, kd, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
    state["params"]
  )
  new_state, _ = apply_updates(state, grads, updates["batch_stats"], tx=tx)
  params = new_state["params"]
  return (
    new_state,
    {
      "loss": loss,
      "bce": bce,
      "kd": kd,
      "grad_norm": _norm(grads),
      "param_norm": _norm(params),
    },
  )


# Test-time augmentation: the views of an image whose probabilities are
# averaged (images are [N, H, W, 3]; axis 2 is the width).
TTA_VIEWS = {
  "none": (lambda x: x,),
  "flip": (lambda x: x, lambda x: x[:, :, ::-1]),
}


def predict_step(
  variables: dict, images, *, model, offset=None, tta="none", temperature=None
) -> tuple[jax.Array, jax.Array]:
  """Eval mode: ``(probabilities [N, C], features [N, D])``.

  ``p = mean_views sigmoid((logits - offset) / T)``: ``offset`` a `[C]`
  post-hoc prior correction, ``T`` a scalar or `[C]` temperature, the views
  those of ``TTA_VIEWS[tta]`` (``flip``: the image and its horizontal
  mirror). The features are the unaugmented view's.
  """
  probs, features = [], None
  for view in TTA_VIEWS[tta]:
    logits, f = model.apply(variables, view(images), train=False)
    if offset is not None:
      logits = logits - offset
    if temperature is not None:
      logits = logits / temperature
    probs.append(jax.nn.sigmoid(logits))
    features = f if features is None else features
  return sum(probs) / len(probs), features
