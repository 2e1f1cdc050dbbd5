"""One training phase (warm-up, teacher or student): jitted step, sharded
feed, interval metrics, validation scoring, checkpoints, progress bar."""

from __future__ import annotations

import json
import signal
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from agt_jax import distributed
from agt_jax import metrics as metrics_lib
from agt_jax.data import pipeline
from agt_jax.errors import (
  CheckpointDamagedError,
  CheckpointWriteError,
  ConfigMismatchError,
  Interrupted,
  NonFiniteLossError,
)
from agt_jax.runtime import MetricWriter, progress, replicate
from agt_jax.train import interrupts
from agt_jax.train import workdir as workdir_lib
from agt_jax.train.checkpoint import Checkpoints

__all__ = ["ConfigMismatchError", "NonFiniteLossError", "TrainingPhase"]


# Scalars logged as their mean over the log interval (``<name>_mean``), next
# to the last step's value (``<name>``).
_MEANS = ("loss", "bce", "kd", "grad_norm")


@jax.jit
def _all_finite(tree) -> jax.Array:
  leaves = [
    x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)
  ]
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


class TrainingPhase:
  """Shared machinery of a training phase.

  ``evaluate(state, step) -> record`` (optional) runs every
  ``config.eval_every`` steps and at the last step; its record goes to
  ``metrics.jsonl`` (the validation scorer of :mod:`agt_jax.train.selection`
  also keeps the best variables).

  Faults: a non-finite loss stops the phase (checked one step late, so the
  host never waits on the step in flight); the whole state is checked for
  finiteness before every save, so a diverged state is never written; a
  SIGINT/SIGTERM (:mod:`agt_jax.train.interrupts`) ends the step, saves it
  and raises :class:`~agt_jax.errors.Interrupted`.
  """

  def __init__(
    self,
    name,
    *,
    step_fn,
    state,
    batches,
    source,
    config,
    workdir,
    mesh,
    total_steps,
    resume,
    extra_args=(),
    save: bool = True,
    evaluate=None,
  ):
    self.name, self.config, self.mesh = name, config, mesh
    self.total = total_steps
    self.writer = MetricWriter(workdir / "metrics.jsonl")
    ds = pipeline.with_images(
      pipeline.host_batches(batches),
      source,
      crop=config.crop,
      train=True,
      seed=config.seed,
      augment=config.augment,
    )
    self.iterator = pipeline.to_iterator(ds, workers=config.workers)
    self.ckpt = (
      Checkpoints(
        workdir / "checkpoints" / name, max_to_keep=config.keep_checkpoints
      )
      if save
      else None
    )
    self.state = replicate(state, mesh)
    self.start = 0
    latest = self.ckpt.latest_step() if save else None
    if latest is not None:
      if not resume:
        raise ConfigMismatchError(
          f"{workdir} already holds {name} checkpoints; pass --resume to "
          "continue that run or use another --workdir."
        )
      latest, self.state, saved = self._restore_trusted()
      if saved != json.loads(config.to_json()):
        raise ConfigMismatchError(
          f"checkpoint config in {self.ckpt.directory}"
          " differs from this run's config."
        )
      self.start = latest
    self.saved_step = self.start if latest is not None else None
    # The steps after the restored one are rerun: drop their old records.
    self.writer.truncate(name, self.start)
    self.step = jax.jit(step_fn, donate_argnums=0)
    self.extra_args = extra_args
    self.evaluate = evaluate
    self.sharding = pipeline.data_sharding(mesh)

  def _restore_trusted(self):
    """``(step, state, config)`` of the newest checkpoint that is intact:
    one that fails its digests or does not restore is skipped with one
    line, and the one before it is used."""
    for step in reversed(self.ckpt.all_steps()):
      self.ckpt.check_process_count(step)
      reason = workdir_lib.damage(self.ckpt.directory, step)
      if reason is None:
        try:
          state, saved = self.ckpt.restore(step, self.state, self.iterator)
          return step, state, saved
        except Exception as e:  # what a cut file raises varies by layer
          reason = f"it does not restore ({type(e).__name__})"
      print(
        f"warning: skipping checkpoint {step} in {self.ckpt.directory}: "
        f"{reason}; resuming from the one before it",
        file=sys.stderr,
        flush=True,
      )
    raise CheckpointDamagedError(
      f"no intact checkpoint in {self.ckpt.directory} (each one is "
      "corrupt or cut short); delete that folder to rerun the "
      f"{self.name} from its start."
    )

  def run(self) -> dict:
    """Trains from the restored step to ``total_steps``; closes the
    checkpoint manager (every async save finished) however it ends."""
    bar = progress(
      self.total, self.start, f"{self.name} fold {self.config.fold}"
    )
    try:
      with interrupts.deferred():
        return self._loop(bar)
    finally:
      if bar is not None:
        bar.close()
      if self.ckpt is not None:
        self._close_checkpoints()

  def _loop(self, bar) -> dict:
    cfg = self.config
    feed = pipeline.device_batches(self.iterator, self.sharding)
    t_last, n_last = time.perf_counter(), 0
    prev = None  # (step, loss) of the previous step, checked one step late
    t0, done_steps = time.perf_counter(), 0
    # Interval means as on-device (sum, count) pairs: no host sync per step.
    acc: dict = {}
    self._config_dict = json.loads(cfg.to_json())
    for s in range(self.start, self.total):
      batch = next(feed)
      self.state, m = self.step(self.state, batch, *self.extra_args)
      if prev is not None:
        self._check_finite(*prev)
      prev = (s + 1, m["loss"])
      acc = metrics_lib.merge_metrics(
        acc, {k: metrics_lib.mean_metric(m[k]) for k in _MEANS if k in m}
      )
      done_steps += 1
      n_last += cfg.batch_size
      if (s + 1) % cfg.log_every == 0 or s + 1 == self.total:
        m = jax.device_get(m)
        self._check_finite(s + 1, m["loss"])
        dt = time.perf_counter() - t_last
        means = metrics_lib.finalize_metrics(jax.device_get(acc))
        acc = {}
        rec = {
          "phase": self.name,
          "step": s + 1,
          "lr": cfg.lr,
          "images_per_s": n_last / max(dt, 1e-9),
          **{k: v for k, v in m.items()},
          **{f"{k}_mean": v for k, v in means.items()},
        }
        self.writer.write(rec)
        t_last, n_last = time.perf_counter(), 0
        if bar is not None:
          bar.set_postfix(loss=f"{float(m['loss']):.4f}")
      if (
        self.evaluate is not None
        and cfg.eval_every > 0
        and ((s + 1) % cfg.eval_every == 0 or s + 1 == self.total)
      ):
        self.writer.write(self.evaluate(self.state, s + 1))
      if (s + 1) % cfg.ckpt_every == 0 or s + 1 == self.total:
        self._check_finite(s + 1, m["loss"])
        self._save(s + 1)
      if bar is not None:
        bar.update(1)
      if self._should_stop(s + 1):
        self._check_finite(s + 1, m["loss"])
        self._stop(s + 1)
    if prev is not None:
      self._check_finite(*prev)
    elapsed = time.perf_counter() - t0
    return {
      "steps": done_steps,
      "seconds": elapsed,
      "images_per_s": done_steps * cfg.batch_size / max(elapsed, 1e-9),
    }

  def variables(self) -> dict:
    return {
      "params": self.state["params"],
      "batch_stats": self.state["batch_stats"],
    }

  # -- faults -------------------------------------------------------------

  def _last_good(self) -> str:
    last = None
    if self.ckpt is not None:
      try:
        self.ckpt.wait()
      except OSError:
        pass  # the failing save is reported by the caller
      last = self.ckpt.latest_step()
    return (
      f"the last good checkpoint is step {last} in " f"{self.ckpt.directory}"
      if last is not None
      else "no checkpoint was written yet"
    )

  def _check_finite(self, step, loss) -> None:
    if not np.isfinite(np.asarray(loss)):
      raise NonFiniteLossError(
        f"{self.name}: non-finite loss ({float(np.asarray(loss))}) at step "
        f"{step}; training stopped, {self._last_good()}. Lower the "
        "learning rate (--set lr=...) and --resume."
      )

  def _save(self, step: int) -> None:
    """Writes a checkpoint of the state after ``step`` (async), after
    checking that every parameter, statistic and optimiser moment is finite:
    the loss is computed before the update, so a finite loss can still
    leave NaN parameters."""
    if self.ckpt is None:
      return
    if not bool(_all_finite(self.state)):
      raise NonFiniteLossError(
        f"{self.name}: the state after step {step} is not finite (NaN/inf "
        "parameters or optimiser moments) although its loss was; nothing "
        f"was saved, {self._last_good()}. Lower the learning rate "
        "(--set lr=...) and --resume."
      )
    try:
      self.ckpt.save(step, self.state, self.iterator, self._config_dict)
    except OSError as e:
      raise CheckpointWriteError(
        f"{self.name}: could not write the checkpoint of step {step} to "
        f"{self.ckpt.directory} ({e}); {self._last_good()}. Free space "
        "and --resume."
      ) from None
    self.saved_step = step

  def _should_stop(self, step: int) -> bool:
    """Whether a SIGINT/SIGTERM asks to stop after ``step``. With several
    processes they must stop at the same step, so they agree at the steps
    that log (a collective, where the host syncs anyway)."""
    if step >= self.total:
      return False
    if jax.process_count() == 1:
      return interrupts.pending() is not None
    if step % self.config.log_every:
      return False
    return distributed.any_process(interrupts.pending() is not None)

  def _stop(self, step: int):
    """A SIGINT/SIGTERM arrived: checkpoint this step, then stop."""
    signum = interrupts.pending() or signal.SIGTERM  # another process's
    interrupts.clear()
    if self.ckpt is None:
      where = (
        f"at step {step} of the {self.name} (not checkpointed: it "
        "reruns on resume)"
      )
    else:
      if self.saved_step != step:
        self._save(step)
      self._close_checkpoints()
      where = (
        f"at step {step} of the {self.name} (checkpoint saved in "
        f"{self.ckpt.directory})"
      )
    raise Interrupted(signum, where)

  def _close_checkpoints(self) -> None:
    try:
      self.ckpt.close()
    except OSError as e:
      raise CheckpointWriteError(
        f"{self.name}: a checkpoint could not be written to "
        f"{self.ckpt.directory} ({e}); {self._last_good()}. Free space "
        "and --resume."
      ) from None
