"""``train_and_evaluate(config, workdir)``: one fold of AGT end to end.

The paper's pipeline, in order: data (test fold, and a validation split
carved from the training fold) -> relational groups -> teacher (alternate
group training) -> student (class-balanced KD) -> evaluation and report.
Each training phase checkpoints ``{state, data iterator, config}``, keeps its
validation-selected variables, and resumes bit-identically.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from agt_jax import config as config_lib
from agt_jax import distributed
from agt_jax import metrics as metrics_lib
from agt_jax import models
from agt_jax.config import Config, from_json
from agt_jax.data import folds as folds_lib
from agt_jax.data import images as images_lib
from agt_jax.data import samplers
from agt_jax.errors import ConfigMismatchError, NonFiniteLossError
from agt_jax.train import evaluation, group_features, interrupts, steps
from agt_jax.train.outputs import atomic_write_text, write_outputs
from agt_jax.train.phase import TrainingPhase, make_mesh, replicate
from agt_jax.train.selection import ValidationScorer

__all__ = ["ConfigMismatchError", "NonFiniteLossError", "train_and_evaluate"]


@dataclasses.dataclass
class FoldData:
  """One fold: the images, its three disjoint splits and their labels."""
  table: Any
  source: Any
  fit_idx: np.ndarray        # training images the models learn from
  val_idx: np.ndarray        # validation: model selection only
  test_idx: np.ndarray       # test fold: scored once, at the end
  assignment: dict

  @property
  def names(self) -> list[str]:
    return list(self.table.class_names)

  @property
  def y_fit(self):
    return self.table.labels[self.fit_idx]

  @property
  def y_val(self):
    return self.table.labels[self.val_idx]

  @property
  def y_test(self):
    return self.table.labels[self.test_idx]

  @property
  def counts(self):
    return self.y_fit.sum(0)

  @property
  def fit_source(self):
    return images_lib.SubsetSource(self.source, self.fit_idx)


@dataclasses.dataclass
class Trained:
  """A trained phase's model: selected and last variables, and how the
  selection went."""
  model: Any
  predict_fn: Any
  selected: dict
  last: dict
  selection: dict
  throughput: dict
  offset: Any = None         # `[C]` post-hoc prior correction (logits)


def train_and_evaluate(config: Config, workdir, *, resume: bool = False
                       ) -> dict:
  """Runs one fold and writes every artefact into ``workdir``.

  Everything that can be checked before compute is checked first (the whole
  config, the workdir, the data and its image files, the device mesh);
  ``config.json`` is written only then, so a run that fails on bad input
  leaves a workdir that a corrected rerun may use. SIGINT/SIGTERM during
  training checkpoint the current step and raise
  :class:`~agt_jax.errors.Interrupted`.

  Returns the ``results.json`` dictionary.
  """
  config = config_lib.validate(config)
  workdir = pathlib.Path(workdir)
  with interrupts.handle_signals():
    resume = _check_workdir(config, workdir, resume)
    interrupts.set_stage("while loading the data (nothing written yet)")
    # Process 0 fills the shared caches (rendering, image checks) first.
    if not distributed.is_primary():
      distributed.barrier("agt_jax: data loaded by process 0")
    data = load_fold(config)
    if distributed.is_primary():
      distributed.barrier("agt_jax: data loaded by process 0")
    group_features.check_grouping(config, data.names, data.counts)
    mesh = make_mesh(config.batch_size, config.eval_batch_size)
    if distributed.is_primary():
      _claim_workdir(config, workdir, resume, data)
    distributed.barrier("agt_jax: workdir claimed")
    return _train_and_evaluate(config, workdir, resume, data, mesh)


def _train_and_evaluate(config, workdir, resume, data, mesh) -> dict:
  encoder = models.make_encoder(config.model, dtype=_dtype(config.dtype))
  throughput: dict = {}
  interrupts.set_stage("while choosing the class groups (the warm-up is "
                       "not checkpointed: it reruns)")
  groups_info = _groups(config, data, encoder, mesh, workdir, resume,
                        throughput)
  groups = tuple(tuple(g) for g in groups_info["groups"])
  if config.trainer == "gbg":
    trained = {"gbg": train_gbg(config, data, encoder, groups, mesh, workdir,
                                resume)}
  elif config.trainer == "transfer":
    trained = {"transfer": train_transfer(config, data, mesh, workdir,
                                          resume)}
  else:
    trained = {"teacher": train_teacher(config, data, encoder, groups, mesh,
                                        workdir, resume)}
  if config.student and config.trainer == "agt":
    teacher = trained["teacher"]
    trained["student"] = train_student(config, data, encoder, groups,
                                       teacher, mesh, workdir, resume)
  interrupts.set_stage("while evaluating the test fold (training is "
                       "checkpointed; a resume only re-evaluates)")
  results, probs = evaluate_models(config, data, trained, groups_info, mesh)
  results["throughput"] = {**throughput, **{
      k: v for t in trained.values() for k, v in t.throughput.items()}}
  if distributed.is_primary():   # the others hold the same results
    for line in results["warnings"]:
      print(f"warning: {line}", file=sys.stderr, flush=True)
    write_outputs(workdir, results, probs, data.y_test, data.test_idx)
  distributed.barrier("agt_jax: outputs written")
  return results


# -- workdir and data -----------------------------------------------------------

def _has_checkpoint(workdir: pathlib.Path) -> bool:
  root = workdir / "checkpoints"
  return root.is_dir() and any(p.name.isdigit() for d in root.iterdir()
                               if d.is_dir() for p in d.iterdir())


def _check_workdir(config: Config, workdir: pathlib.Path, resume: bool
                   ) -> bool:
  """Refuses a workdir holding another run; writes nothing. Returns whether
  the run resumes: a workdir whose run stopped before its first checkpoint
  (bad data path, bad fold, a crash in the warm-up) is started afresh."""
  cfg_path = workdir / "config.json"
  if not cfg_path.exists():
    return False
  if not _has_checkpoint(workdir) and not (workdir / "results.json").exists():
    return False
  saved = from_json(cfg_path.read_text())
  if not resume:
    raise ConfigMismatchError(
        f"{workdir} already holds a run (config.json and checkpoints); pass "
        "--resume to continue it or choose another --workdir.")
  if saved != config:
    diff = {k: (getattr(saved, k), getattr(config, k))
            for k in json.loads(config.to_json())
            if getattr(saved, k) != getattr(config, k)}
    raise ConfigMismatchError(
        f"cannot resume {workdir}: its config differs in {diff} "
        "(saved, requested).")
  return True


def _claim_workdir(config: Config, workdir: pathlib.Path, resume: bool,
                   data: "FoldData") -> None:
  """Writes ``config.json``, ``folds.json`` (and the skipped images); a
  fresh start clears what a run that never checkpointed left behind."""
  workdir.mkdir(parents=True, exist_ok=True)
  if not resume and not _has_checkpoint(workdir):
    for name in ("metrics.jsonl", "groups.json", "results.json",
                 "done.json"):
      (workdir / name).unlink(missing_ok=True)
    shutil.rmtree(workdir / "checkpoints", ignore_errors=True)
  atomic_write_text(workdir / "config.json", config.to_json())
  atomic_write_text(workdir / "folds.json", json.dumps(
      {**data.assignment, "synthetic": data.table.synthetic}, indent=1))
  bad = data.table.meta.get("skipped_images")
  if bad:
    atomic_write_text(workdir / "skipped_images.json",
                      json.dumps(bad, indent=1))


def load_data(config: Config):
  """``(table, source)`` for the configured dataset (and class subset)."""
  from agt_jax.data import registry
  table, source = registry.load_dataset(
      config.dataset, data_dir=config.data_dir, cache_dir=config.cache_dir,
      image_size=config.image_size, seed=config.seed,
      max_images=config.max_images, skip_bad_images=config.skip_bad_images)
  if config.classes:
    table = table.select_classes(config.classes)
  return table, source


def load_fold(config: Config) -> FoldData:
  """The dataset and this fold's fit / validation / test split (written to
  ``folds.json`` when the run claims its workdir)."""
  table, source = load_data(config)
  train_idx, test_idx, assignment = folds_lib.fold_indices(
      table, config.fold, num_folds=config.num_folds, seed=config.fold_seed,
      mode=config.fold_mode)
  fit_idx, val_idx = folds_lib.validation_split(
      table, train_idx, fraction=config.val_fraction, seed=config.fold_seed)
  assignment = {**assignment, "validation_fraction": config.val_fraction,
                "num_fit_images": int(len(fit_idx)),
                "num_validation_images": int(len(val_idx)),
                "validation_patients": sorted(
                    set(table.patient_ids[val_idx].tolist()),
                    key=lambda p: (len(p), p))}
  return FoldData(table, source, fit_idx, val_idx, test_idx, assignment)


def _dtype(name: str):
  return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


def _load_init(path: str, state: dict) -> dict:
  """Copies encoder weights from ``path`` into ``state`` (our checkpoint
  folder, or a torchvision ``.pth`` state dict); a multi-teacher's
  ``encoder_g*`` all start from the same weights."""
  from agt_jax.models import weights
  keys = [k for k in state["params"] if k == "encoder"
          or k.startswith("encoder_g")]
  params, stats = dict(state["params"]), dict(state["batch_stats"])
  for k in keys:
    view = {"params": {"encoder": params[k]},
            "batch_stats": {"encoder": stats.get(k, {})}}
    params[k], stats[k] = weights.load_encoder(path, view)
  return {**state, "params": params, "batch_stats": stats}


# -- groups ---------------------------------------------------------------------

def _groups(config, data: FoldData, encoder, mesh, workdir, resume,
            throughput) -> dict:
  path = workdir / "groups.json"
  if resume and path.exists():
    return json.loads(path.read_text())
  info = group_features.make_groups(
      config, encoder, data.fit_source, data.y_fit, data.names, data.counts,
      mesh, (config.crop, config.crop, 3), workdir, throughput, _load_init)
  if distributed.is_primary():
    atomic_write_text(path, json.dumps(info, indent=1))
  return info


# -- teacher and student ---------------------------------------------------------

def _run_phase(name, *, model, step_fn, state, batches, config, data, mesh,
               workdir, resume, total_steps, extra_args=(), offset=None,
               prepare=None) -> Trained:
  """Trains one phase with validation scoring and returns its model.

  ``offset``: `[C]` logits subtracted at prediction (post-hoc prior
  correction); ``prepare``: ``variables -> variables`` applied before any
  scoring (batch-norm recalibration), so the selected and last variables
  are the prepared ones.
  """
  fn = evaluation.predictor(model, offset)
  scorer = None
  if len(data.val_idx) and config.eval_every > 0:
    scorer = ValidationScorer(name, model, fn, data.source, data.val_idx,
                              data.y_val, config, mesh,
                              workdir / "checkpoints" / f"{name}_best",
                              prepare=prepare)
  try:
    phase = TrainingPhase(name, step_fn=step_fn, state=state,
                          batches=batches, source=data.fit_source,
                          config=config, workdir=workdir, mesh=mesh,
                          total_steps=total_steps, resume=resume,
                          extra_args=extra_args, evaluate=scorer)
    throughput = {name: phase.run()}
    interrupts.set_stage(f"after the {name} (checkpointed), while scoring "
                         "its validation split")
    last = phase.variables()
    if prepare is not None:
      last = prepare(last)
    selection: dict[str, Any] = {"select": "last", "step": total_steps}
    selected = last
    if scorer is not None:
      if config.select == "best" and scorer.best_step is not None:
        selected = scorer.best_variables(last)
        selection = {"select": "best validation " + (
                         "ODIR final score" if config.select_metric == "final"
                         else "macro F1 at 0.5"),
                     "step": int(scorer.best_step)}
      selection["val_probs"] = scorer.probs(selected)
      selection["val_probs_last"] = (selection["val_probs"]
                                     if selected is last
                                     else scorer.probs(last))
  finally:
    if scorer is not None:
      scorer.close()
  return Trained(model, fn, selected, last, selection, throughput,
                 None if offset is None else np.asarray(offset, np.float32))


def teacher_sampling(config: Config, groups, joint: bool, num_classes: int):
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


def _bn_recalibration(config, data: FoldData, model, mesh):
  """``variables -> variables`` recomputing the batch-norm statistics on
  ``config.bn_recalibrate`` instance-balanced training batches (the same
  batches every call), or None."""
  if not config.bn_recalibrate:
    return None
  from agt_jax.data import pipeline
  from agt_jax.train import batch_norm
  batches = samplers.instance_balanced_batches(
      data.y_fit, batch_size=config.batch_size, seed=config.seed + 7)
  ds = pipeline.with_images(pipeline.host_batches(batches), data.fit_source,
                            crop=config.crop, train=True,
                            seed=config.seed + 7, augment=config.augment)
  sharding = pipeline.data_sharding(mesh)
  fn = batch_norm.moments_fn(model)
  decoded: list = []    # the same batches every call: decoded once

  def images():
    if not decoded:
      decoded.extend(ds[t]["image"] for t in range(config.bn_recalibrate))
    for x in decoded:
      yield pipeline.global_batch({"image": x}, sharding)["image"]

  def prepare(variables):
    return batch_norm.recalibrate(model, variables, images(), fn=fn)
  return prepare


def train_teacher(config, data: FoldData, encoder, groups, mesh, workdir,
                  resume) -> Trained:
  """Alternate group training (paper Algorithm 4)."""
  joint = _joint(config)
  alpha, batch_groups = teacher_sampling(config, groups, joint,
                                         len(data.names))
  shift = samplers.prior_shift(data.y_fit, batch_groups,
                               batch_size=config.batch_size, alpha=alpha)
  teacher, ttx, options, joint = _teacher_parts(
      config, encoder, groups, data.counts, len(data.fit_idx),
      logit_shift=shift if config.prior_correction == "loss" else None)
  state = steps.init_state(
      teacher, ttx, (config.crop, config.crop, 3), config.seed,
      loss_state=steps.initial_loss_state(options, len(data.names)))
  if config.init:
    state = _load_init(config.init, state)
  offset = (own_group_shift(shift, batch_groups)
            if config.prior_correction == "posthoc" else None)

  def teacher_fn(state, batch):
    return steps.teacher_step(state, batch, model=teacher, tx=ttx,
                              options=options)

  trained = _run_phase(
      "teacher", model=teacher, step_fn=teacher_fn, state=state,
      batches=samplers.group_mixed_batches(
          data.y_fit, batch_groups, batch_size=config.batch_size,
          alpha=alpha, seed=config.seed, switch_every=config.switch_every),
      config=config, data=data, mesh=mesh, workdir=workdir, resume=resume,
      total_steps=config.teacher_steps, offset=offset,
      prepare=_bn_recalibration(config, data, teacher, mesh))
  trained.selection["schedule"] = "joint" if joint else "alternate"
  trained.selection["prior_correction"] = config.prior_correction
  trained.selection["prior_shift"] = np.round(shift, 6).tolist()
  return trained


def train_student(config, data: FoldData, encoder, groups, teacher: Trained,
                  mesh, workdir, resume) -> Trained:
  """The student on the original data, distilled from the selected teacher
  (paper Eq. 8)."""
  student = models.Student(encoder, num_classes=len(data.names))
  stx = steps.adam(config.lr, config.b1, config.b2)
  state = steps.init_state(student, stx, (config.crop, config.crop, 3),
                           config.seed + 1)
  if config.init:
    state = _load_init(config.init, state)
  kd = steps.KDOptions(kd=config.kd, temperature=config.temperature,
                       gamma=config.gamma, direction=config.kd_direction,
                       groups=groups if config.kd == "subset" else None)
  class_counts = jnp.asarray(data.counts, jnp.float32)

  teacher_offset = (None if teacher.offset is None
                    else jnp.asarray(teacher.offset))

  def student_fn(state, batch, teacher_variables):
    return steps.student_step(state, batch, teacher_variables, model=student,
                              teacher_model=teacher.model, tx=stx,
                              class_counts=class_counts, options=kd,
                              teacher_offset=teacher_offset)

  return _run_phase(
      "student", model=student, step_fn=student_fn, state=state,
      batches=samplers.instance_balanced_batches(
          data.y_fit, batch_size=config.batch_size, seed=config.seed + 1),
      config=config, data=data, mesh=mesh, workdir=workdir, resume=resume,
      total_steps=config.student_steps,
      extra_args=(replicate(teacher.selected, mesh),))


def train_gbg(config, data: FoldData, encoder, groups, mesh, workdir,
              resume) -> Trained:
  """GBG (paper 004, Algorithm 2): one model, every group's loss each step,
  combined by MGDA's weights, on GAC batches."""
  from agt_jax.train import gbg
  model = models.Student(encoder, num_classes=len(data.names))
  tx = steps.adam(config.lr, config.b1, config.b2)
  state = steps.init_state(model, tx, (config.crop, config.crop, 3),
                           config.seed)
  if config.init:
    state = _load_init(config.init, state)
  options = gbg.MOOOptions(groups=groups,
                           objective=config_lib.objective(config),
                           moo=config.moo, normalizer=config.moo_normalizer)

  def gbg_fn(state, batch):
    return gbg.moo_step(state, batch, model=model, tx=tx, options=options)

  trained = _run_phase(
      "gbg", model=model, step_fn=gbg_fn, state=state,
      batches=samplers.gac_batches(
          data.y_fit, groups, batch_size=config.batch_size, seed=config.seed,
          fraction=config.gac_fraction),
      config=config, data=data, mesh=mesh, workdir=workdir, resume=resume,
      total_steps=config.teacher_steps)
  trained.selection["schedule"] = f"gbg ({config.moo})"
  trained.selection["objectives"] = [list(map(int, g))
                                     for g in options.objectives]
  return trained


def transfer_model(config: Config, num_classes: int) -> models.TransferNet:
  """The :class:`~agt_jax.models.TransferNet` of ``config``: a CNN gives
  its last map; ViT its class token unless attention or Grad-CAM needs
  the patch-token map."""
  vit = config.model.startswith("vit")
  spatial = not vit or config.attention != "none" or config.cam_entropy != 0
  encoder = models.make_encoder(config.model, dtype=_dtype(config.dtype),
                                pool=not spatial)
  return models.TransferNet(
      encoder, num_classes=num_classes, attention=config.attention,
      head=config.head, hidden=config.head_hidden, dropout=config.dropout,
      freeze_encoder=config.freeze_encoder)


def _load_transfer_init(path: str, state: dict) -> dict:
  """A checkpoint of the same model (Task 1.3 starts from Task 1.2's
  selected variables): all of it; otherwise its encoder (``.pth``, a
  teacher, a model with another head)."""
  from agt_jax.models import weights
  restored = weights.load_variables(path, state)
  if restored is None:
    return _load_init(path, state)
  return {**state, **restored}


def train_transfer(config, data: FoldData, mesh, workdir, resume) -> Trained:
  """Paper 001: one TransferNet on every class; a frozen encoder
  (Task 1.2) or all layers (Tasks 1.3-4), BCE / focal / positive-only CB,
  optional SE / MHA and the Grad-CAM entropy term."""
  model = transfer_model(config, len(data.names))
  tx = steps.adam(config.lr, config.b1, config.b2)
  if config.freeze_encoder:
    tx = steps.frozen_encoder_tx(tx)
  state = steps.init_state(model, tx, (config.crop, config.crop, 3),
                           config.seed)
  if config.init:
    state = _load_transfer_init(config.init, state)
    state["opt_state"] = tx.init(state["params"])
  options = steps.TransferOptions(
      loss=config.transfer_loss, focal_alpha=config.focal_alpha,
      focal_gamma=config.focal_gamma, cb_beta=config.cb_beta,
      class_counts=tuple(int(x) for x in data.counts),
      cam_entropy=config.cam_entropy, seed=config.seed)

  def transfer_fn(state, batch):
    return steps.transfer_step(state, batch, model=model, tx=tx,
                               options=options)

  trained = _run_phase(
      "transfer", model=model, step_fn=transfer_fn, state=state,
      batches=samplers.instance_balanced_batches(
          data.y_fit, batch_size=config.batch_size, seed=config.seed),
      config=config, data=data, mesh=mesh, workdir=workdir, resume=resume,
      total_steps=config.teacher_steps)
  trained.selection["schedule"] = (
      f"transfer ({'frozen encoder' if config.freeze_encoder else 'all layers'}"
      f", {config.transfer_loss}, attention {config.attention})")
  return trained


def _joint(config: Config) -> bool:
  """Whether every teacher head trains every step on instance-balanced
  batches (the joint schedule, BAGS, the multi-teacher baseline)."""
  return (config.schedule == "joint" or config.teacher == "multi"
          or config.loss == "bags")


def _teacher_parts(config: Config, encoder, groups, counts, num_train,
                   logit_shift=None):
  """``(model, optimiser, loss options, joint)`` of the teacher phase.

  AGT alternates groups (``teacher_tx`` updates only the active head);
  BAGS and the multi-teacher baseline train every head each step on
  instance-balanced batches (``joint``). ``logit_shift`` (`[G, C]`) is the
  sampler's prior shift the loss adds (``prior_correction="loss"``).
  """
  joint = _joint(config)
  c = len(counts)
  if config.teacher == "multi":   # combinations checked by config.validate
    model = models.MultiTeacher(encoder, groups=groups, num_classes=c)
  else:
    ride = config.loss == "ride"
    model = models.Teacher(encoder, groups=groups, num_classes=c,
                           experts=config.experts if ride else 1,
                           expert_scale=30.0 if ride else None,
                           others=config.loss == "bags")
  if joint:
    tx = steps.joint_tx(config.lr, b1=config.b1, b2=config.b2)
  else:
    tx = steps.teacher_tx(len(groups), config.lr, b1=config.b1, b2=config.b2)
  options = steps.LossOptions(
      reweight=config.reweight, beta=config.beta, decay=config.rw_decay,
      loss=config.loss,
      class_counts=tuple(int(x) for x in counts), num_examples=int(num_train),
      groups=tuple(tuple(int(x) for x in g) for g in groups),
      ib_start_step=int(round(config.ib_start * config.teacher_steps)),
      seed=config.seed, rw_stats=config.rw_stats,
      logit_shift=None if logit_shift is None else tuple(
          tuple(float(v) for v in row) for row in np.asarray(logit_shift)))
  return model, tx, options, joint


# -- evaluation -------------------------------------------------------------------

def reweight_rule(config: Config) -> str:
  """One line naming the teacher's loss and re-weighting rule."""
  if config.trainer == "transfer":
    return (f"trainer=transfer: {config.transfer_loss} on every class "
            f"({'frozen encoder' if config.freeze_encoder else 'all layers'}"
            f", attention {config.attention}, head {config.head}"
            + (f", Grad-CAM entropy {config.cam_entropy:g}"
               if config.cam_entropy else "") + ")")
  if config.trainer == "gbg":
    return (f"trainer=gbg: one {config_lib.objective(config)} loss per "
            f"group, combined by moo={config.moo} (normaliser "
            f"{config.moo_normalizer}), GAC batches")
  if config.loss not in ("agt", "ride"):
    return f"loss={config.loss} (no AGT re-weighting)"
  rule = {"gradient": f"paper per-batch gradient rule, Eqs. 1-4 (beta "
                      f"{config.beta:g})",
          "feedback": f"fed-back gradient statistics (beta {config.beta:g}, "
                      f"decay {config.rw_decay:g})",
          "count": f"batch-count rule, Table 4 (beta {config.beta:g})",
          "none": "no re-weighting (plain BCE on every head)"}[config.reweight]
  if config.reweight == "feedback" and config.rw_stats == "group":
    rule += ", one row of statistics per group"
  return f"reweight={config.reweight}: {rule}"


def prior_rule(config: Config) -> str:
  """One line naming how the teacher's sampler prior shift is handled."""
  if config.trainer != "agt":
    return "none (not an AGT teacher)"
  return {"none": "none (the paper): teacher logits carry the group-mixed "
                  "sampler's prior shift",
          "loss": "loss: trained on z + shift[active group], so the logits "
                  "estimate natural-prior log-odds",
          "posthoc": "posthoc: each class's own-group shift subtracted at "
                     "prediction and for distillation"
          }[config.prior_correction] + (
              f"; batch norm recalibrated on {config.bn_recalibrate} "
              "instance-balanced batches" if config.bn_recalibrate else "")


def evaluate_models(config, data: FoldData, trained: dict, groups_info,
                    mesh) -> tuple[dict, dict]:
  """Test-fold metrics of every trained model (selected and last), scores
  with validation-tuned thresholds, and collapse warnings."""
  names, counts = data.names, data.counts
  results: dict[str, Any] = {
      "dataset": data.table.name + (" (synthetic)" if data.table.synthetic
                                    else ""),
      "synthetic": data.table.synthetic, "fold": config.fold,
      "class_names": names, "train_images": int(len(data.fit_idx)),
      "validation_images": int(len(data.val_idx)),
      "train_class_counts": [int(x) for x in counts],
      "test_images": int(len(data.test_idx)),
      "config": json.loads(config.to_json()), "groups": groups_info,
      "reweight_rule": reweight_rule(config),
      "prior_correction": prior_rule(config), "selection": {},
      "warnings": []}
  probs = {}
  y_val, y_test = data.y_val, data.y_test
  single_label = config_lib.objective(config) == "softmax"
  for name, t in trained.items():
    p = evaluation.predict(t.model, t.selected, data.source, data.test_idx,
                           y_test, config, mesh, f"test {name}",
                           fn=t.predict_fn)[0]
    results[name] = evaluation.report(p, y_test, names, counts)
    if single_label:
      results[name]["top1"] = metrics_lib.top1_report(y_test, p, counts)
    probs[name] = p
    sel = {k: v for k, v in t.selection.items() if not k.startswith("val_")}
    if t.last is not t.selected:
      p_last = evaluation.predict(t.model, t.last, data.source, data.test_idx,
                                  y_test, config, mesh, None,
                                  fn=t.predict_fn)[0]
      results[f"{name}_last"] = evaluation.report(p_last, y_test, names,
                                                  counts)
      probs[f"{name}_last"] = p_last
    if "val_probs" in t.selection:
      pv, pv_last = t.selection["val_probs"], t.selection["val_probs_last"]
      sel["val"] = metrics_lib.odir_score(y_val, pv)
      sel["val_last"] = metrics_lib.odir_score(y_val, pv_last)
      sel["val_macro_f1"] = metrics_lib.macro_f1(y_val, pv)
      sel["val_macro_auc"] = evaluation.report(pv, y_val, names,
                                               counts)["macro_auc"]
      thresholds = evaluation.tune_thresholds(y_val, pv)
      sel["thresholds"] = [float(x) for x in thresholds]
      results[name]["tuned"] = evaluation.tuned_score(y_test, p, thresholds)
      sel["global_threshold"] = evaluation.tune_global_threshold(y_val, pv)
      results[name]["global_threshold"] = evaluation.global_threshold_score(
          y_test, p, sel["global_threshold"])
      p_neg, split = evaluation.negative_probabilities(y_val, pv_last), \
          "validation split"
    else:
      p_neg, split = evaluation.negative_probabilities(y_test, p), \
          "test fold, end of training"
    sel["p_neg_last"] = [float(x) for x in p_neg]
    results["selection"][name] = sel
    msg = evaluation.collapse_message(p_neg, names, name, config, split)
    if msg:
      results["warnings"].append(msg)
  first = next(iter(trained.values()))
  results["teacher_schedule"] = first.selection["schedule"]
  results["device"] = str(jax.devices()[0].device_kind)
  results["devices"] = {"count": jax.device_count(),
                        "processes": jax.process_count()}
  return results, probs
