"""One training phase (warm-up, teacher or student): jitted step, sharded
feed, interval metrics, validation scoring, checkpoints, progress bar."""

from __future__ import annotations

import json
import pathlib
import time

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from agt_jax import metrics as metrics_lib
from agt_jax.data import pipeline
from agt_jax.train.checkpoint import Checkpoints


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN/inf loss; the last good checkpoint is kept."""


class ConfigMismatchError(ValueError):
  """A resume found a workdir whose saved config differs."""


class MetricWriter:
  """Appends one JSON line per call to ``metrics.jsonl``."""

  def __init__(self, path: pathlib.Path):
    self.path = path

  def write(self, record: dict) -> None:
    clean = {k: (np.asarray(v).tolist() if hasattr(v, "shape") else v)
             for k, v in record.items()}
    with open(self.path, "a") as f:
      f.write(json.dumps(clean) + "\n")


def progress(total: int, initial: int, desc: str):
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


def replicate(tree, mesh):
  return jax.device_put(tree, NamedSharding(mesh, P()))


# Scalars logged as their mean over the log interval (``<name>_mean``), next
# to the last step's value (``<name>``).
_MEANS = ("loss", "bce", "kd", "grad_norm")


class TrainingPhase:
  """Shared machinery of a training phase.

  ``evaluate(state, step) -> record`` (optional) runs every
  ``config.eval_every`` steps and at the last step; its record goes to
  ``metrics.jsonl`` (the validation scorer of :mod:`agt_jax.train.selection`
  also keeps the best variables).
  """

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
    self.state = replicate(state, mesh)
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
    bar = progress(self.total, self.start, f"{self.name} fold {cfg.fold}")
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
      if self.evaluate is not None and cfg.eval_every > 0 and (
          (s + 1) % cfg.eval_every == 0 or s + 1 == self.total):
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

  def variables(self) -> dict:
    return {"params": self.state["params"],
            "batch_stats": self.state["batch_stats"]}

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
