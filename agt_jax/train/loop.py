"""``train_and_evaluate(config, workdir)``: one fold of AGT end to end.

Sections, in order: setup (data, fold, mesh) -> grouping (warm-up features)
-> teacher (alternate group training) -> student (class-balanced KD) ->
evaluation -> results, report and plots. Each training phase checkpoints
``{state, data iterator, config}`` and resumes bit-identically.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from agt_jax import grouping as grouping_lib
from agt_jax import metrics as metrics_lib
from agt_jax import models
from agt_jax.config import Config, from_json
from agt_jax.data import folds as folds_lib
from agt_jax.data import images as images_lib
from agt_jax.data import pipeline, samplers
from agt_jax.train import report as report_lib
from agt_jax.train import steps
from agt_jax.train.checkpoint import Checkpoints


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN/inf loss; the last good checkpoint is kept."""


class ConfigMismatchError(ValueError):
  """A resume found a workdir whose saved config differs."""


# -- small helpers ------------------------------------------------------------

class MetricWriter:
  """Appends one JSON line per call to ``metrics.jsonl``."""

  def __init__(self, path: pathlib.Path):
    self.path = path

  def write(self, record: dict) -> None:
    clean = {k: (np.asarray(v).tolist() if hasattr(v, "shape") else v)
             for k, v in record.items()}
    with open(self.path, "a") as f:
      f.write(json.dumps(clean) + "\n")


def _progress(total: int, initial: int, desc: str):
  try:
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, desc=desc, unit="step",
                dynamic_ncols=True, mininterval=1.0)
  except ImportError:
    return None


def make_mesh(batch_size: int) -> jax.sharding.Mesh:
  """A 1-D ``data`` mesh over as many devices as divide the batch."""
  n = jax.device_count()
  while batch_size % n:
    n -= 1
  return jax.make_mesh((n,), ("data",), axis_types=(AxisType.Auto,),
                       devices=jax.devices()[:n])


def _dtype(name: str):
  return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


def _replicate(tree, mesh):
  return jax.device_put(tree, NamedSharding(mesh, P()))


# -- data ---------------------------------------------------------------------

def load_data(config: Config):
  """``(table, source)`` for the configured dataset."""
  from agt_jax.data import registry
  return registry.load_dataset(
      config.dataset, data_dir=config.data_dir, cache_dir=config.cache_dir,
      image_size=config.image_size, seed=config.seed,
      max_images=config.max_images)


# -- phases ---------------------------------------------------------------------

# Scalars logged as their mean over the log interval (``<name>_mean``), next
# to the last step's value (``<name>``).
_MEANS = ("loss", "bce", "kd", "grad_norm")


class _Phase:
  """Shared machinery of a training phase: jitted step, sharded feed,
  logging, checkpoints, non-finite guard, progress bar."""

  def __init__(self, name, *, step_fn, state, batches, source, config,
               workdir, mesh, total_steps, resume, extra_args=(),
               save: bool = True, evaluate=None):
    self.name, self.config, self.mesh = name, config, mesh
    self.total = total_steps
    self.writer = MetricWriter(workdir / "metrics.jsonl")
    ds = pipeline.with_images(batches, source, crop=config.crop, train=True,
                              seed=config.seed)
    self.iterator = pipeline.to_iterator(ds, workers=config.workers)
    self.ckpt = Checkpoints(workdir / "checkpoints" / name,
                            max_to_keep=config.keep_checkpoints) \
        if save else None
    self.state = _replicate(state, mesh)
    self.start = 0
    latest = self.ckpt.latest_step() if save else None
    if latest is not None:
      if not resume:
        raise ConfigMismatchError(
            f"{workdir} already holds {name} checkpoints; pass --resume to "
            "continue that run or use another --workdir.")
      self.state, saved = self.ckpt.restore(latest, self.state, self.iterator)
      if saved != json.loads(config.to_json()):
        raise ConfigMismatchError(f"checkpoint config in {self.ckpt.directory}"
                                  " differs from this run's config.")
      self.start = latest
    self.step = jax.jit(step_fn, donate_argnums=0)
    self.extra_args = extra_args
    self.evaluate = evaluate
    self.sharding = pipeline.data_sharding(mesh)

  def run(self) -> dict:
    cfg = self.config
    bar = _progress(self.total, self.start, f"{self.name} fold {cfg.fold}")
    feed = pipeline.device_batches(self.iterator, self.sharding)
    t_last, n_last = time.perf_counter(), 0
    prev = None   # (step, loss) of the previous step, checked one step late
    t0, done_steps = time.perf_counter(), 0
    # Interval means as on-device (sum, count) pairs: no host sync per step.
    acc: dict = {}
    config_dict = json.loads(cfg.to_json())
    for s in range(self.start, self.total):
      batch = next(feed)
      self.state, m = self.step(self.state, batch, *self.extra_args)
      if prev is not None:
        self._check_finite(*prev)
      prev = (s + 1, m["loss"])
      acc = metrics_lib.merge_metrics(acc, {
          k: metrics_lib.mean_metric(m[k]) for k in _MEANS if k in m})
      done_steps += 1
      n_last += cfg.batch_size
      if (s + 1) % cfg.log_every == 0 or s + 1 == self.total:
        m = jax.device_get(m)
        self._check_finite(s + 1, m["loss"])
        dt = time.perf_counter() - t_last
        means = metrics_lib.finalize_metrics(jax.device_get(acc))
        acc = {}
        rec = {"phase": self.name, "step": s + 1, "lr": cfg.lr,
               "images_per_s": n_last / max(dt, 1e-9),
               **{k: v for k, v in m.items()},
               **{f"{k}_mean": v for k, v in means.items()}}
        self.writer.write(rec)
        t_last, n_last = time.perf_counter(), 0
        if bar is not None:
          bar.set_postfix(loss=f"{float(m['loss']):.4f}")
      if self.evaluate is not None and ((s + 1) % cfg.eval_every == 0
                                        or s + 1 == self.total):
        self.writer.write(self.evaluate(self.state, s + 1))
      if self.ckpt is not None and ((s + 1) % cfg.ckpt_every == 0
                                    or s + 1 == self.total):
        self._check_finite(s + 1, m["loss"])
        self.ckpt.save(s + 1, self.state, self.iterator, config_dict)
      if bar is not None:
        bar.update(1)
    if prev is not None:
      self._check_finite(*prev)
    if bar is not None:
      bar.close()
    elapsed = time.perf_counter() - t0
    if self.ckpt is not None:
      self.ckpt.close()
    return {"steps": done_steps, "seconds": elapsed,
            "images_per_s": done_steps * cfg.batch_size / max(elapsed, 1e-9)}

  def _check_finite(self, step, loss) -> None:
    if not np.isfinite(np.asarray(loss)):
      last = None
      if self.ckpt is not None:
        self.ckpt.wait()
        last = self.ckpt.latest_step()
      where = (f"the last good checkpoint is step {last} in "
               f"{self.ckpt.directory}" if last is not None
               else "no checkpoint was written yet")
      raise NonFiniteLossError(
          f"{self.name}: non-finite loss ({float(np.asarray(loss))}) at step "
          f"{step}; training stopped, {where}. Lower the learning rate "
          "(--set lr=...) and --resume.")


def predictor(model):
  """The jitted eval-mode ``(variables, images) -> (probs, features)``; build
  it once per model and pass it to every :func:`_predict` of that model."""
  return jax.jit(lambda v, x: steps.predict_step(v, x, model=model))


def _predict(model, variables, source, indices, labels, config, mesh,
             desc, fn=None) -> tuple[np.ndarray, np.ndarray]:
  """Eval-mode probabilities and features for ``indices`` (centre crops)."""
  ds = pipeline.with_images(
      pipeline.eval_batches(len(indices), labels,
                            batch_size=config.eval_batch_size),
      images_lib.SubsetSource(source, indices), crop=config.crop, train=False)
  fn = fn or predictor(model)
  variables = _replicate(variables, mesh)
  n_dev = mesh.devices.size
  probs, feats = [], []
  bar = _progress(len(ds), 0, desc) if desc else None
  for t in range(len(ds)):
    b = ds[t]
    x = b["image"]
    pad = (-len(x)) % n_dev
    if pad:
      x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
    p, f = fn(variables, jax.device_put(x, pipeline.data_sharding(mesh)))
    keep = b["valid"]
    probs.append(np.asarray(p)[:len(keep)][keep])
    feats.append(np.asarray(f)[:len(keep)][keep])
    if bar is not None:
      bar.update(1)
  if bar is not None:
    bar.close()
  return np.concatenate(probs), np.concatenate(feats)


def _evaluate(probs, labels, class_names, train_counts) -> dict:
  tiers = grouping_lib.shot_groups(train_counts)
  counts = np.asarray(train_counts)
  many = int(counts[list(tiers[0])].min()) - 1 if len(tiers) == 3 else 100
  few = int(counts[list(tiers[1])].min()) if len(tiers) == 3 else 20
  report = metrics_lib.multilabel_report(labels, probs, list(class_names),
                                         class_counts=counts, many=many,
                                         few=few)
  return report


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


# -- main entry -----------------------------------------------------------------

def train_and_evaluate(config: Config, workdir, *, resume: bool = False
                       ) -> dict:
  """Runs one fold and writes every artefact into ``workdir``.

  Returns the ``results.json`` dictionary.
  """
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  cfg_path = workdir / "config.json"
  if cfg_path.exists():
    saved = from_json(cfg_path.read_text())
    if not resume:
      raise ConfigMismatchError(
          f"{workdir} already holds a run (config.json); pass --resume to "
          "continue it or choose another --workdir.")
    if saved != config:
      diff = {k: (getattr(saved, k), getattr(config, k))
              for k in json.loads(config.to_json())
              if getattr(saved, k) != getattr(config, k)}
      raise ConfigMismatchError(
          f"cannot resume {workdir}: its config differs in {diff} "
          "(saved, requested).")
  cfg_path.write_text(config.to_json())
  writer = MetricWriter(workdir / "metrics.jsonl")
  if not resume and writer.path.exists():
    writer.path.unlink()

  # --- setup: data, fold, mesh ---
  table, source = load_data(config)
  train_idx, test_idx, assignment = folds_lib.fold_indices(
      table, config.fold, num_folds=config.num_folds, seed=config.fold_seed,
      mode=config.fold_mode)
  (workdir / "folds.json").write_text(json.dumps(
      {**assignment, "synthetic": table.synthetic}, indent=1))
  y_train = table.labels[train_idx]
  y_test = table.labels[test_idx]
  names = list(table.class_names)
  counts = y_train.sum(0)
  mesh = make_mesh(config.batch_size)
  train_source = images_lib.SubsetSource(source, train_idx)
  encoder = models.make_encoder(config.model, dtype=_dtype(config.dtype))
  image_shape = (config.crop, config.crop, 3)
  throughput = {}

  # --- grouping ---
  groups_path = workdir / "groups.json"
  if resume and groups_path.exists():
    groups_info = json.loads(groups_path.read_text())
  else:
    groups_info = _make_groups(config, encoder, train_source, y_train, names,
                               counts, mesh, image_shape, workdir, throughput)
    groups_path.write_text(json.dumps(groups_info, indent=1))
  groups = tuple(tuple(g) for g in groups_info["groups"])

  # --- teacher ---
  teacher, ttx, options, joint = _teacher_parts(config, encoder, groups,
                                                counts, len(train_idx))
  tstate = steps.init_state(
      teacher, ttx, image_shape, config.seed,
      loss_state=steps.initial_loss_state(options, len(names)))
  if config.init:
    tstate = _load_init(config.init, tstate)
  alpha = config.alpha if len(groups) > 1 and not joint else 0.0
  batch_groups = (tuple(range(len(names))),) if joint else groups

  def teacher_fn(state, batch):
    return steps.teacher_step(state, batch, model=teacher, tx=ttx,
                              options=options)

  teacher_predict = predictor(teacher)   # periodic and final evaluation
  evaluate = None
  if config.eval_every:
    evaluate = _periodic_eval(teacher, source, test_idx, y_test, config, mesh,
                              teacher_predict)
  phase = _Phase("teacher", step_fn=teacher_fn, state=tstate,
                 batches=samplers.group_mixed_batches(
                     y_train, batch_groups, batch_size=config.batch_size,
                     alpha=alpha, seed=config.seed,
                     switch_every=config.switch_every),
                 source=train_source, config=config, workdir=workdir,
                 mesh=mesh, total_steps=config.teacher_steps, resume=resume,
                 evaluate=evaluate)
  throughput["teacher"] = phase.run()
  tvars = {"params": phase.state["params"],
           "batch_stats": phase.state["batch_stats"]}
  teacher_probs, _ = _predict(teacher, tvars, source, test_idx, y_test, config,
                              mesh, "eval teacher", fn=teacher_predict)
  results: dict[str, Any] = {
      "dataset": table.name + (" (synthetic)" if table.synthetic else ""),
      "synthetic": table.synthetic, "fold": config.fold,
      "class_names": names, "train_images": int(len(train_idx)),
      "train_class_counts": [int(x) for x in counts],
      "test_images": int(len(test_idx)),
      "config": json.loads(config.to_json()), "groups": groups_info,
      "teacher": _evaluate(teacher_probs, y_test, names, counts)}
  probs = {"teacher": teacher_probs}

  # --- student ---
  if config.student:
    student = models.Student(encoder, num_classes=len(names))
    stx = steps.adam(config.lr, config.b1, config.b2)
    sstate = steps.init_state(student, stx, image_shape, config.seed + 1)
    if config.init:
      sstate = _load_init(config.init, sstate)
    kd = steps.KDOptions(kd=config.kd, temperature=config.temperature,
                         gamma=config.gamma, direction=config.kd_direction,
                         groups=groups if config.kd == "subset" else None)
    class_counts = jnp.asarray(counts, jnp.float32)

    def student_fn(state, batch, teacher_variables):
      return steps.student_step(state, batch, teacher_variables,
                                model=student, teacher_model=teacher, tx=stx,
                                class_counts=class_counts, options=kd)

    sphase = _Phase("student", step_fn=student_fn, state=sstate,
                    batches=samplers.instance_balanced_batches(
                        y_train, batch_size=config.batch_size,
                        seed=config.seed + 1),
                    source=train_source, config=config, workdir=workdir,
                    mesh=mesh, total_steps=config.student_steps,
                    resume=resume, extra_args=(_replicate(tvars, mesh),))
    throughput["student"] = sphase.run()
    svars = {"params": sphase.state["params"],
             "batch_stats": sphase.state["batch_stats"]}
    student_probs, _ = _predict(student, svars, source, test_idx, y_test,
                                config, mesh, "eval student")
    results["student"] = _evaluate(student_probs, y_test, names, counts)
    probs["student"] = student_probs

  # --- results, report, plots ---
  results["throughput"] = throughput
  results["teacher_schedule"] = "joint" if joint else "alternate"
  results["device"] = str(jax.devices()[0].device_kind)
  (workdir / "results.json").write_text(json.dumps(results, indent=1))
  np.savez_compressed(workdir / "test_predictions.npz", labels=y_test,
                      index=test_idx, **probs)
  metrics = report_lib.read_metrics(workdir / "metrics.jsonl")
  title = f"{results['dataset']} fold {config.fold}"
  report_lib.plot_curves(metrics, workdir / "curves.png", title)
  report_lib.plot_gradients(metrics, names, workdir / "gradients.png", title)
  report_lib.plot_roc(y_test, probs, names, workdir / "roc.png", title)
  report_lib.write_report(workdir, results)
  return results


def _teacher_parts(config: Config, encoder, groups, counts, num_train):
  """``(model, optimiser, loss options, joint)`` of the teacher phase.

  AGT alternates groups (``teacher_tx`` updates only the active head);
  BAGS and the multi-teacher baseline train every head each step on
  instance-balanced batches (``joint``).
  """
  joint = (config.schedule == "joint" or config.teacher == "multi"
           or config.loss == "bags")
  c = len(counts)
  if config.schedule not in ("alternate", "joint"):
    raise ValueError(f"schedule must be alternate|joint, got "
                     f"{config.schedule!r}.")
  if config.teacher == "multi":
    if config.loss in ("ride", "bags"):
      raise ValueError(f"loss={config.loss!r} needs the shared-encoder "
                       "teacher's expert/others heads; use teacher=shared.")
    model = models.MultiTeacher(encoder, groups=groups, num_classes=c)
  elif config.teacher == "shared":
    ride = config.loss == "ride"
    if ride and config.experts < 2:
      raise ValueError(f"loss='ride' needs experts >= 2, got "
                       f"{config.experts}.")
    model = models.Teacher(encoder, groups=groups, num_classes=c,
                           experts=config.experts if ride else 1,
                           expert_scale=30.0 if ride else None,
                           others=config.loss == "bags")
  else:
    raise ValueError(f"teacher must be shared|multi, got {config.teacher!r}.")
  if joint:
    tx = steps.joint_tx(config.lr, b1=config.b1, b2=config.b2)
  else:
    tx = steps.teacher_tx(len(groups), config.lr, b1=config.b1, b2=config.b2)
  options = steps.LossOptions(
      reweight=config.reweight, beta=config.beta, loss=config.loss,
      class_counts=tuple(int(x) for x in counts), num_examples=int(num_train),
      groups=tuple(tuple(int(x) for x in g) for g in groups),
      ib_start_step=int(round(config.ib_start * config.teacher_steps)),
      seed=config.seed)
  return model, tx, options, joint


def _periodic_eval(model, source, test_idx, y_test, config, mesh, fn):
  """A callback ``(state, step) -> record``: per-class AP (and top-1 recall
  for single-label data) of ``model`` on the test split."""
  from sklearn.metrics import average_precision_score
  single_label = bool(np.all(y_test.sum(1) == 1))

  def evaluate(state, step):
    variables = {"params": state["params"],
                 "batch_stats": state["batch_stats"]}
    probs, _ = _predict(model, variables, source, test_idx, y_test, config,
                        mesh, None, fn=fn)
    # None (JSON null) where a class has no test positive.
    ap = [float(average_precision_score(y_test[:, c], probs[:, c]))
          if y_test[:, c].any() else None for c in range(y_test.shape[1])]
    rec = {"phase": "eval_teacher", "step": step, "ap": ap,
           "map": float(np.nanmean(np.array(ap, dtype=float)))}
    if single_label:
      hit = probs.argmax(1) == y_test.argmax(1)
      rec["top1_per_class"] = [float(hit[y_test[:, c] > 0].mean())
                               if y_test[:, c].any() else None
                               for c in range(y_test.shape[1])]
      rec["top1"] = float(hit.mean())
    return rec

  return evaluate


def _make_groups(config, encoder, train_source, y_train, names, counts, mesh,
                 image_shape, workdir, throughput) -> dict:
  """Chooses the class groups; relational/gradient groupings read features
  or gradients of an encoder trained briefly with plain BCE (or given by
  ``--init``)."""
  strategy = config.grouping
  info: dict[str, Any] = {"strategy": strategy}
  kwargs = dict(num_classes=len(names), class_names=names,
                class_counts=counts, n_groups=config.n_groups,
                together=config.together, seed=config.seed)
  if strategy in ("relational", "gradient"):
    student = models.Student(encoder, num_classes=len(names))
    tx = steps.adam(config.lr, config.b1, config.b2)
    state = steps.init_state(student, tx, image_shape, config.seed + 2)
    if config.init:
      state = _load_init(config.init, state)
      info["features"] = f"--init {config.init}"
    if config.warmup_steps and not config.init:
      def warm_fn(s, b):
        return steps.plain_step(s, b, model=student, tx=tx)
      phase = _Phase("warmup", step_fn=warm_fn, state=state,
                     batches=samplers.instance_balanced_batches(
                         y_train, batch_size=config.batch_size,
                         seed=config.seed + 2),
                     source=train_source, config=config, workdir=workdir,
                     mesh=mesh, total_steps=config.warmup_steps, resume=False,
                     save=False)
      # A warm-up is short and deterministic: after a crash it is rerun.
      throughput["warmup"] = phase.run()
      state = phase.state
      info["features"] = (f"warm-up: {config.warmup_steps} steps of plain "
                          "BCE from random initialisation (no pretrained "
                          "weights given)")
    elif not config.init:
      info["features"] = "random initialisation (no warm-up, no --init)"
    variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
    idx = np.arange(len(y_train))
    _, feats = _predict(student, variables, train_source, idx, y_train,
                        config, mesh, "features for grouping")
    class_features = np.stack([
        feats[y_train[:, c] > 0].mean(0) if y_train[:, c].any()
        else np.zeros(feats.shape[1]) for c in range(len(names))])
    if strategy == "relational":
      groups = grouping_lib.relational_groups(
          class_features, n_groups=config.n_groups, together=config.together,
          class_names=names, seed=config.seed)
      stab = grouping_lib.grouping_stability(
          class_features, n_groups=config.n_groups, together=config.together,
          class_names=names, seeds=range(3))
      info["stability"] = {"mean_ari": stab["mean_ari"],
                           "min_ari": stab["min_ari"],
                           "pca_sizes": [30, 50, 75, 100],
                           "note": "PCA sizes are capped at the number of "
                                   "clustered classes"}
    else:
      grads = _class_gradients(student, variables, train_source, y_train,
                               config, mesh)
      groups = grouping_lib.gradient_groups(grads, n_groups=config.n_groups,
                                            seed=config.seed)
  else:
    groups = grouping_lib.make_groups(
        strategy, **kwargs, many=config.shot_many or None,
        few=config.shot_few or None)
    info["features"] = "not used"
  samplers.validate_groups(groups, len(names), names)
  info["groups"] = [list(map(int, g)) for g in groups]
  info["names"] = [[names[c] for c in g] for g in groups]
  return info


def _class_gradients(model, variables, source, labels, config, mesh,
                     batches: int = 4) -> np.ndarray:
  """Per-class mean encoder gradient of the BCE of that class's positives
  (GBG), over a few centre-cropped batches."""
  import optax

  def class_loss(enc_params, images, y, c):
    params = {**variables["params"], "encoder": enc_params}
    (logits, _) = model.apply({"params": params,
                               "batch_stats": variables["batch_stats"]},
                              images, train=False)
    per = optax.sigmoid_binary_cross_entropy(logits, y)[:, c]
    mask = y[:, c]
    return (per * mask).sum() / jnp.maximum(mask.sum(), 1.0)

  grad_fn = jax.jit(jax.grad(class_loss), static_argnums=3)
  c = labels.shape[1]
  rng = np.random.default_rng(config.seed)
  acc = None
  for _ in range(batches):
    idx = rng.choice(len(labels), size=min(config.batch_size, len(labels)),
                     replace=False)
    x = np.stack([images_lib.center_crop(source[i], config.crop) for i in idx])
    y = jnp.asarray(labels[idx], jnp.float32)
    rows = []
    for k in range(c):
      g = grad_fn(variables["params"]["encoder"], x, y, k)
      rows.append(np.concatenate([np.ravel(v) for v in jax.tree.leaves(g)]))
    rows = np.stack(rows)
    acc = rows if acc is None else acc + rows
  return acc / batches
