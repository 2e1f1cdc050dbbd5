"""Orbax checkpoints of ``{state, data iterator, config}`` in one Composite."""

from __future__ import annotations

import pathlib

import grain
import jax
import orbax.checkpoint as ocp

from agt_jax import distributed
from agt_jax.train import interrupts, workdir


def _options(
  directory: pathlib.Path, max_to_keep: int
) -> ocp.CheckpointManagerOptions:
  """Manager options with barrier keys of this manager's own.

  A phase's checkpoints and its best-variables checkpoint save at the same
  step (asynchronously); orbax names its multi-process barriers by an
  operation counter, so two managers can wait on the same key at once
  ("Barrier ... is already ongoing") and a multi-process run stalls. A
  per-directory prefix keeps their keys apart.
  """
  return ocp.CheckpointManagerOptions(
    max_to_keep=max_to_keep,
    create=True,
    multiprocessing_options=ocp.options.MultiprocessingOptions(
      barrier_sync_key_prefix=f"agt_jax_{directory.name}"
    ),
  )


class Checkpoints:
  """One phase's checkpoints (e.g. ``<workdir>/checkpoints/teacher``).

  Each save holds the train state (params, batch_stats, opt_state, step), the
  Grain iterator's position and the config, so a resumed run reads exactly
  the batches the interrupted one would have read.
  """

  def __init__(self, directory, *, max_to_keep: int = 2):
    self.directory = pathlib.Path(directory).absolute()
    self._mngr = ocp.CheckpointManager(
      self.directory, options=_options(self.directory, max_to_keep)
    )
    self._closed = False

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._mngr.all_steps())

  def _seal(self) -> None:
    """Digests of every finished checkpoint (process 0 writes them)."""
    if distributed.is_primary():
      workdir.seal(self.directory, self.all_steps())

  @interrupts.shielded()
  def save(self, step: int, state, iterator, config: dict) -> None:
    # The previous save is final once orbax's async write has finished
    # (orbax waits for it before starting this one anyway).
    self._mngr.wait_until_finished()
    self._seal()
    self._mngr.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(iterator),
        config=ocp.args.JsonSave(config),
      ),
    )

  def check_process_count(self, step: int) -> None:
    """Raises when checkpoint ``step`` was written by another number of
    processes: each process saved its own data-iterator position, so a
    resume needs the same process count."""
    from agt_jax.errors import ConfigMismatchError

    files = sorted(
      (self.directory / str(step) / "data").glob("process_*-of-*.json")
    )
    counts = {int(f.stem.rsplit("-of-", 1)[1]) for f in files}
    n = jax.process_count()
    if counts and counts != {n}:
      (saved,) = counts if len(counts) == 1 else (sorted(counts),)
      raise ConfigMismatchError(
        f"checkpoint {step} in {self.directory} was written by {saved} "
        f"process(es) and this run has {n}: resume with {saved} "
        f"process(es) (--num-processes {saved})."
      )

  @interrupts.shielded()
  def wait(self) -> None:
    if not self._closed:
      self._mngr.wait_until_finished()

  @interrupts.shielded()
  def restore(self, step: int, state_like, iterator) -> tuple[dict, dict]:
    """Restores into the structure/shardings of ``state_like`` and moves
    ``iterator`` to the saved position; returns ``(state, config)``."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_like)
    out = self._mngr.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract),
        data=grain.checkpoint.CheckpointRestore(iterator),
        config=ocp.args.JsonRestore(),
      ),
    )
    return out["state"], out["config"]

  @interrupts.shielded()
  def restore_state(self, step: int, state_like) -> dict:
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_like)
    out = self._mngr.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
    )
    return out["state"]

  @interrupts.shielded()
  def close(self) -> None:
    """Waits for the in-flight async save, then releases the manager
    (idempotent)."""
    if self._closed:
      return
    self._closed = True
    self._mngr.wait_until_finished()
    self._seal()
    self._mngr.close()


class BestCheckpoint:
  """The validation-selected variables of a phase and their scores.

  One orbax checkpoint (``max_to_keep=1``) of ``{variables, meta}``, where
  ``meta`` holds the step and the validation scores; rewritten whenever the
  validation score improves, read back on resume and at the end of the
  phase.
  """

  def __init__(self, directory):
    self.directory = pathlib.Path(directory).absolute()
    self._mngr = ocp.CheckpointManager(
      self.directory, options=_options(self.directory, 1)
    )

  def step(self) -> int | None:
    return self._mngr.latest_step()

  @interrupts.shielded()
  def save(self, step: int, variables, meta: dict) -> None:
    self._mngr.save(
      step,
      args=ocp.args.Composite(
        variables=ocp.args.StandardSave(variables), meta=ocp.args.JsonSave(meta)
      ),
      force=True,
    )

  @interrupts.shielded()
  def meta(self) -> dict | None:
    step = self.step()
    if step is None:
      return None
    return self._mngr.restore(
      step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
    )["meta"]

  @interrupts.shielded()
  def restore(self, variables_like) -> dict:
    self._mngr.wait_until_finished()
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, variables_like)
    return self._mngr.restore(
      self.step(),
      args=ocp.args.Composite(variables=ocp.args.StandardRestore(abstract)),
    )["variables"]

  @interrupts.shielded()
  def close(self) -> None:
    if getattr(self, "_closed", False):
      return
    self._closed = True
    self._mngr.wait_until_finished()
    self._mngr.close()
