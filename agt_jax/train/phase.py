"""One training phase (warm-up, teacher or student): jitted step, sharded
feed, interval metrics, validation scoring, checkpoints, progress bar."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import time

import jax
import jax.numpy as jnp

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
from agt_jax.train import interrupts, steps
from agt_jax.train import workdir as workdir_lib
from agt_jax.train.checkpoint import Checkpoints

__all__ = ["ConfigMismatchError", "NonFiniteLossError", "TrainingPhase"]


# Scalars logged as their mean over the log interval (``<name>_mean``), next
# to the last step's value (``<name>``).
_MEANS = ("loss", "bce", "kd", "grad_norm")


@jax.jit
def _accumulate(acc, m) -> dict:
  """Adds one step's scalars to the interval's on-device ``(sum, count)``
  pairs (:func:`agt_jax.metrics.merge_metrics`) and keeps the index (in the
  interval) and value of its first non-finite loss."""
  if acc is None:
    acc = {
      "n": jnp.zeros((), jnp.int32),
      "first_bad": jnp.full((), -1, jnp.int32),
      "bad_loss": jnp.zeros((), jnp.float32),
      "means": {},
    }
  loss = jnp.asarray(m["loss"], jnp.float32)
  new_bad = (acc["first_bad"] < 0) & ~jnp.isfinite(loss)
  return {
    "n": acc["n"] + 1,
    "first_bad": jnp.where(new_bad, acc["n"], acc["first_bad"]),
    "bad_loss": jnp.where(new_bad, loss, acc["bad_loss"]),
    "means": metrics_lib.merge_metrics(
      acc["means"], {k: metrics_lib.mean_metric(v) for k, v in m.items()}
    ),
  }


@jax.jit
def _all_finite(tree) -> jax.Array:
  leaves = [
    x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)
  ]
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


class TrainingPhase:
  """Shared machinery of a training phase.

  ``step_fn(state, batch, *extra_args) -> (state, metrics)``: best a
  ``functools.partial`` of a module-level step with keyword arguments,
  whose compiled program every equal run in the process then shares
  (:func:`agt_jax.train.steps.compiled_step`); any callable works.

  ``evaluate(state, step) -> record`` (optional) runs every
  ``config.eval_every`` steps and at the last step; its record goes to
  ``metrics.jsonl`` (the validation scorer of :mod:`agt_jax.train.selection`
  also keeps the best variables).

  Faults: a non-finite loss stops the phase (checked one step late, so the
  host never waits on the step in flight); the whole state is checked for
  finiteness before every save, so a diverged state is never written; a
  SIGINT/SIGTERM (:mod:`agt_jax.train.interrupts`) ends the step, saves it
  and raises :class:`~agt_jax.errors.Interrupted`.

  Between logging steps the host never waits on the device: batches are
  prefetched to the mesh two deep (:class:`~agt_jax.data.pipeline.DevicePrefetch`),
  interval means and the first non-finite loss are accumulated on device,
  and both are read at the next logging step, save or stop. ``guard``
  (e.g. ``"disallow"``) runs those steps under ``jax.transfer_guard`` so a
  test can prove it.
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
    guard: str | None = None,
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
    self.sharding = pipeline.data_sharding(mesh)
    self.iterator = pipeline.DevicePrefetch(
      pipeline.to_iterator(ds, workers=config.workers), self.sharding
    )
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
    # One program per process for equal steps (steps.compiled_step).
    self.step = steps.compiled_step(step_fn)
    self.extra_args = extra_args
    self.evaluate = evaluate
    self.guard = guard

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
        out = self._loop(bar)
      interrupts.set_stage(
        f"at the end of the {self.name} (all {self.total} steps "
        "checkpointed; a resume goes on after it)"
        if self.ckpt is not None
        else f"at the end of the {self.name} (not checkpointed: it reruns)"
      )
      return out
    finally:
      if bar is not None:
        bar.close()
      # Stops Grain's worker processes and frees their shared memory now,
      # not at interpreter exit (where it is reported as leaked).
      self.iterator.close()
      if self.ckpt is not None:
        self._close_checkpoints()

  def _loop(self, bar) -> dict:
    cfg = self.config
    t_last, n_last = time.perf_counter(), 0
    t0, done_steps = time.perf_counter(), 0
    acc, acc_from = None, self.start  # on-device interval accumulator

    def guarded():
      if self.guard is None:  # leave the process's own setting alone
        return contextlib.nullcontext()
      return jax.transfer_guard(self.guard)

    self._config_dict = json.loads(cfg.to_json())
    for s in range(self.start, self.total):
      with guarded():
        batch = next(self.iterator)
        self.state, m = self.step(self.state, batch, *self.extra_args)
        acc = _accumulate(acc, {k: m[k] for k in _MEANS if k in m})
        done_steps += 1
        n_last += cfg.batch_size
        if bar is not None:
          bar.update(1)
      stop = self._should_stop(s + 1)  # a collective at logging steps
      log = (s + 1) % cfg.log_every == 0 or s + 1 == self.total
      evaluate = (
        self.evaluate is not None
        and cfg.eval_every > 0
        and ((s + 1) % cfg.eval_every == 0 or s + 1 == self.total)
      )
      save = (s + 1) % cfg.ckpt_every == 0 or s + 1 == self.total
      if not (log or evaluate or save or stop):
        continue
      # The host syncs here: the interval's losses must all be finite
      # before anything is logged, scored or saved.
      read = jax.device_get(acc)
      self._check_interval(read, acc_from)
      if log:
        m = jax.device_get(m)
        dt = time.perf_counter() - t_last
        rec = {
          "phase": self.name,
          "step": s + 1,
          "lr": cfg.lr,
          "images_per_s": n_last / max(dt, 1e-9),
          **{k: v for k, v in m.items()},
          **{
            f"{k}_mean": v
            for k, v in metrics_lib.finalize_metrics(read["means"]).items()
          },
        }
        self.writer.write(rec)
        t_last, n_last = time.perf_counter(), 0
        acc, acc_from = None, s + 1
        if bar is not None:
          bar.set_postfix(loss=f"{float(m['loss']):.4f}")
      if evaluate:
        self.writer.write(self.evaluate(self.state, s + 1))
      if save:
        self._save(s + 1)
      if stop:
        self._stop(s + 1)
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

  def _check_interval(self, read, first_step) -> None:
    """Raises on the first non-finite loss since ``first_step``."""
    if read["first_bad"] < 0:
      return
    raise NonFiniteLossError(
      f"{self.name}: non-finite loss ({float(read['bad_loss'])}) at step "
      f"{first_step + int(read['first_bad']) + 1}; training stopped, "
      f"{self._last_good()}. Lower the learning rate (--set lr=...) and "
      "--resume."
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
