"""The AGT trainer (paper Algorithm 4, then Eq. 8): a teacher with one
shared encoder and a head per class group, trained cyclically on
group-mixed batches, then a student distilled from it."""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

from agt_jax import methods, models
from agt_jax.data import samplers
from agt_jax.models.weights import load_init
from agt_jax.runtime import replicate
from agt_jax.train import steps
from agt_jax.train.fit import Trained, run_phase


def train(config, data, groups, ctx) -> dict[str, Trained]:
  """The teacher, and the student distilled from it (``config.student``)."""
  out = {"teacher": train_teacher(config, data, groups, ctx)}
  if config.student:
    out["student"] = train_student(config, data, groups, out["teacher"], ctx)
  return out


def model(config, phase: str, groups, num_classes: int):
  """The untrained model of ``phase`` (``teacher`` or ``student``)."""
  encoder = models.make_encoder(config.model, dtype=models.DTYPES[config.dtype])
  if phase == "student":
    return models.Student(encoder, num_classes=num_classes)
  # The model does not depend on the counts (only the loss options do).
  return build_teacher(config, encoder, groups, [1] * num_classes, 1)[0]


def joint(config) -> bool:
  """Whether every teacher head trains every step on instance-balanced
  batches (the joint schedule, BAGS, the multi-teacher baseline)."""
  return (
    config.schedule == "joint"
    or config.teacher == "multi"
    or methods.TEACHER_LOSSES.get_spec(config.loss).joint
  )


def teacher_sampling(config, groups, joint: bool, num_classes: int):
  """``(alpha, batch groups)`` of the teacher's sampler: group-mixed
  batches for AGT, one all-class group (instance-balanced) when joint."""
  alpha = config.alpha if len(groups) > 1 and not joint else 0.0
  batch_groups = (tuple(range(num_classes)),) if joint else tuple(groups)
  return alpha, batch_groups


def own_group_shift(shift: np.ndarray, groups) -> np.ndarray:
  """`[C]`: each class's shift in the batches that train its own head
  (``shift[g(c), c]``), what post-hoc correction subtracts."""
  out = np.zeros(shift.shape[1], np.float64)
  for g, classes in enumerate(groups):
    out[list(classes)] = shift[g, list(classes)]
  return out


def teacher_batches(config, data, batch_groups, alpha):
  """The teacher's batch indices: group-mixed (AGT; one group is plain
  instance-balanced sampling), or class-balanced for the one-head CB
  sampling baseline (``teacher_sampler``; its group id is always 0)."""
  if config.teacher_sampler == "class_balanced":
    return samplers.class_balanced_batches(
      data.y_fit, batch_size=config.batch_size, seed=config.seed, group=0
    )
  return samplers.group_mixed_batches(
    data.y_fit,
    batch_groups,
    batch_size=config.batch_size,
    alpha=alpha,
    seed=config.seed,
    switch_every=config.switch_every,
  )


def build_teacher(config, encoder, groups, counts, num_train, logit_shift=None):
  """``(model, optimiser, loss options, joint)`` of the teacher phase.

  AGT alternates groups (``teacher_tx`` updates only the active head);
  BAGS and the multi-teacher baseline train every head each step on
  instance-balanced batches (``joint``). The loss's spec
  (:data:`agt_jax.methods.TEACHER_LOSSES`) adds its head arguments.
  ``logit_shift`` (`[G, C]`) is the sampler's prior shift the loss adds
  (``prior_correction="loss"``).
  """
  is_joint = joint(config)
  c = len(counts)
  if config.teacher == "multi":  # combinations checked by config.validate
    model = models.MultiTeacher(encoder, groups=groups, num_classes=c)
  else:
    model = models.Teacher(
      encoder,
      groups=groups,
      num_classes=c,
      **methods.TEACHER_LOSSES.get_spec(config.loss).head(config),
    )
  if is_joint:
    tx = steps.joint_tx(
      config.lr, b1=config.b1, b2=config.b2, weight_decay=config.weight_decay
    )
  else:
    tx = steps.teacher_tx(
      len(groups),
      config.lr,
      b1=config.b1,
      b2=config.b2,
      weight_decay=config.weight_decay,
    )
  options = steps.LossOptions(
    reweight=config.reweight,
    beta=config.beta,
    decay=config.rw_decay,
    loss=config.loss,
    class_counts=tuple(int(x) for x in counts),
    num_examples=int(num_train),
    groups=tuple(tuple(int(x) for x in g) for g in groups),
    ib_start_step=int(round(config.ib_start * config.teacher_steps)),
    seed=config.seed,
    rw_stats=config.rw_stats,
    objective=config.teacher_objective,
    logit_shift=None
    if logit_shift is None
    else tuple(tuple(float(v) for v in row) for row in np.asarray(logit_shift)),
  )
  return model, tx, options, is_joint


def bn_recalibration(config, data, model, mesh):
  """``variables -> variables`` recomputing the batch-norm statistics on
  ``config.bn_recalibrate`` instance-balanced training batches (the same
  batches every call), or None."""
  if not config.bn_recalibrate:
    return None
  from agt_jax.data import pipeline
  from agt_jax.train import batch_norm

  batches = samplers.instance_balanced_batches(
    data.y_fit, batch_size=config.batch_size, seed=config.seed + 7
  )
  ds = pipeline.with_images(
    pipeline.host_batches(batches),
    data.fit_source,
    crop=config.crop,
    train=True,
    seed=config.seed + 7,
    augment=config.augment,
  )
  sharding = pipeline.data_sharding(mesh)
  fn = batch_norm.moments_fn(model)
  decoded: list = []  # the same batches every call: decoded once

  def images():
    if not decoded:
      decoded.extend(ds[t]["image"] for t in range(config.bn_recalibrate))
    for x in decoded:
      yield pipeline.global_batch({"image": x}, sharding)["image"]

  def prepare(variables):
    return batch_norm.recalibrate(model, variables, images(), fn=fn)

  return prepare


def train_teacher(config, data, groups, ctx) -> Trained:
  """Alternate group training (paper Algorithm 4)."""
  alpha, batch_groups = teacher_sampling(
    config, groups, joint(config), len(data.names)
  )
  shift = samplers.prior_shift(
    data.y_fit, batch_groups, batch_size=config.batch_size, alpha=alpha
  )
  teacher, ttx, options, is_joint = build_teacher(
    config,
    ctx.encoder,
    groups,
    data.counts,
    data.num_fit,
    logit_shift=shift if config.prior_correction == "loss" else None,
  )
  state = steps.init_state(
    teacher,
    ttx,
    (config.crop, config.crop, 3),
    config.seed,
    loss_state=steps.initial_loss_state(options, len(data.names)),
  )
  if config.init:
    state = load_init(config.init, state)
  offset = (
    own_group_shift(shift, batch_groups)
    if config.prior_correction == "posthoc"
    else None
  )

  trained = run_phase(
    "teacher",
    model=teacher,
    step_fn=functools.partial(
      steps.teacher_step, model=teacher, tx=ttx, options=options
    ),
    state=state,
    batches=teacher_batches(config, data, batch_groups, alpha),
    config=config,
    data=data,
    mesh=ctx.mesh,
    workdir=ctx.workdir,
    resume=ctx.resume,
    total_steps=config.teacher_steps,
    offset=offset,
    prepare=bn_recalibration(config, data, teacher, ctx.mesh),
  )
  trained.selection["schedule"] = "joint" if is_joint else "alternate"
  trained.selection["prior_correction"] = config.prior_correction
  trained.selection["prior_shift"] = np.round(shift, 6).tolist()
  return trained


def train_student(config, data, groups, teacher: Trained, ctx) -> Trained:
  """The student on the original data, distilled from the selected teacher
  (paper Eq. 8)."""
  student = models.Student(ctx.encoder, num_classes=len(data.names))
  stx = steps.adam(config.lr, config.b1, config.b2, config.weight_decay)
  state = steps.init_state(
    student, stx, (config.crop, config.crop, 3), config.seed + 1
  )
  if config.init:
    state = load_init(config.init, state)
  kd = steps.KDOptions(
    kd=config.kd,
    temperature=config.temperature,
    gamma=config.gamma,
    direction=config.kd_direction,
    scale=config.kd_scale,
    groups=groups if methods.KD.get_spec(config.kd).needs_groups else None,
  )
  class_counts = jnp.asarray(data.counts, jnp.float32)

  teacher_offset = (
    None if teacher.offset is None else jnp.asarray(teacher.offset)
  )

  return run_phase(
    "student",
    model=student,
    step_fn=functools.partial(
      steps.student_step,
      model=student,
      teacher_model=teacher.model,
      tx=stx,
      class_counts=class_counts,
      options=kd,
      teacher_offset=teacher_offset,
    ),
    state=state,
    batches=samplers.instance_balanced_batches(
      data.y_fit, batch_size=config.batch_size, seed=config.seed + 1
    ),
    config=config,
    data=data,
    mesh=ctx.mesh,
    workdir=ctx.workdir,
    resume=ctx.resume,
    total_steps=config.student_steps,
    extra_args=(replicate(teacher.selected, ctx.mesh),),
  )


def prior_rule(config) -> str:
  """One line naming how the teacher's sampler prior shift is handled."""
  return {
    "none": "none (the paper): teacher logits carry the group-mixed "
    "sampler's prior shift",
    "loss": "loss: trained on z + shift[active group], so the logits "
    "estimate natural-prior log-odds",
    "posthoc": "posthoc: each class's own-group shift subtracted at "
    "prediction and for distillation",
  }[config.prior_correction] + (
    f"; batch norm recalibrated on {config.bn_recalibrate} "
    "instance-balanced batches"
    if config.bn_recalibrate
    else ""
  )
