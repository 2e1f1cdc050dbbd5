"""Many processes, one run: JAX's multi-controller runtime.

Each process drives its own devices; ``jax.distributed.initialize`` joins
them, and from then on ``jax.devices()`` lists every device of every process
and one jitted step runs over all of them. Nothing here coordinates by
itself: this module finds out *whether* and *how* to call ``initialize``
(command-line flags, ``JAX_COORDINATOR_ADDRESS``, Slurm, Open MPI), and
wraps the few ``multihost_utils`` calls the training loop needs.

Single-process runs never call ``initialize`` and every helper here is then
the plain single-process operation.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

import jax
import numpy as np

from agt_jax.errors import ConfigError

__all__ = [
  "Cluster",
  "any_process",
  "barrier",
  "detect",
  "host_rows",
  "initialize",
  "is_primary",
  "to_host",
]


@dataclasses.dataclass(frozen=True)
class Cluster:
  """How this process joins the run.

  ``how`` is ``"flags"`` (``--coordinator/--num-processes/--process-id``),
  ``"env"`` (``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and
  ``JAX_PROCESS_ID`` or a Kubernetes indexed Job's ``JOB_COMPLETION_INDEX``),
  ``"slurm"`` / ``"openmpi"`` (JAX reads the launcher's variables) or
  ``"auto"`` (``--distributed`` with no other hint: JAX's own detection).
  """

  how: str
  coordinator: str | None = None
  num_processes: int | None = None
  process_id: int | None = None

  def kwargs(self) -> dict:
    if self.coordinator is None:
      return {}
    return dict(
      coordinator_address=self.coordinator,
      num_processes=self.num_processes,
      process_id=self.process_id,
    )


def _int(environ, key) -> int | None:
  value = environ.get(key)
  if value in (None, ""):
    return None
  try:
    return int(value)
  except ValueError:
    raise ConfigError(f"{key}={value!r} is not a whole number.") from None


def detect(
  *,
  coordinator: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  force: bool = False,
  environ: Mapping[str, str] = os.environ,
) -> Cluster | None:
  """The cluster this process is part of, or ``None`` for one process.

  Explicit flags win, then ``JAX_COORDINATOR_ADDRESS``, then a Slurm step
  (``srun``) or an Open MPI job with more than one task; a launcher with a
  single task (an interactive ``salloc`` shell) is one process. ``force``
  (``--distributed``) asks JAX to detect the cluster even without a hint.
  """
  flags = {
    "--coordinator": coordinator,
    "--num-processes": num_processes,
    "--process-id": process_id,
  }
  given = [k for k, v in flags.items() if v is not None]
  if given:
    missing = [k for k, v in flags.items() if v is None]
    if missing:
      raise ConfigError(
        f"{', '.join(given)} given without {', '.join(missing)}: "
        "--coordinator HOST:PORT, --num-processes N and --process-id I "
        "go together."
      )
    return _checked(Cluster("flags", coordinator, num_processes, process_id))
  address = environ.get("JAX_COORDINATOR_ADDRESS")
  if address:
    n = _int(environ, "JAX_NUM_PROCESSES")
    i = _int(environ, "JAX_PROCESS_ID")
    if i is None:
      i = _int(environ, "JOB_COMPLETION_INDEX")
    if n is None or i is None:
      raise ConfigError(
        f"JAX_COORDINATOR_ADDRESS={address} is set, but not "
        "JAX_NUM_PROCESSES and JAX_PROCESS_ID (or a Kubernetes indexed "
        "Job's JOB_COMPLETION_INDEX): every process needs all three."
      )
    return _checked(Cluster("env", address, n, i))
  if (
    _int(environ, "SLURM_NTASKS") or 1
  ) > 1 and "SLURM_STEP_NODELIST" in environ:
    return Cluster("slurm")
  if (_int(environ, "OMPI_COMM_WORLD_SIZE") or 1) > 1:
    return Cluster("openmpi")
  return Cluster("auto") if force else None


def _checked(c: Cluster) -> Cluster:
  if ":" not in c.coordinator:
    raise ConfigError(f"coordinator {c.coordinator!r}: expected HOST:PORT.")
  if c.num_processes < 1 or not 0 <= c.process_id < c.num_processes:
    raise ConfigError(
      f"process id {c.process_id} of {c.num_processes} processes: the id "
      f"must be 0 to {c.num_processes - 1}."
    )
  return c


def initialize(cluster: Cluster | None, *, timeout_s: int = 300) -> None:
  """Joins the run (before anything touches a device); a no-op for
  ``None``."""
  if cluster is None:
    return
  try:
    jax.distributed.initialize(
      **cluster.kwargs(), initialization_timeout=timeout_s
    )
  except (ValueError, RuntimeError) as e:
    raise ConfigError(
      f"could not join the distributed run ({cluster.how}): {e}. Start "
      "every process with the same --coordinator HOST:PORT and "
      "--num-processes, each with its own --process-id, or under srun / "
      "mpirun."
    ) from None


def is_primary() -> bool:
  """Process 0 writes the run's files and shows the progress bars."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Every process waits here until all have arrived."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def any_process(flag: bool) -> bool:
  """Whether ``flag`` is true on any process (a collective: every process
  must call it at the same point)."""
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils

  return bool(
    np.any(multihost_utils.process_allgather(np.asarray(flag, np.int32)))
  )


def to_host(x) -> np.ndarray:
  """A (batch-sharded) global array as one numpy array on every process."""
  if jax.process_count() == 1:
    return np.asarray(x)
  from jax.experimental import multihost_utils

  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def host_rows(batch_size: int) -> tuple[int, int]:
  """``[lo, hi)``: this process's contiguous rows of a global batch.

  The data mesh lists devices process by process (see
  :func:`agt_jax.runtime.make_mesh`), so process ``i`` of ``n`` holds
  rows ``i * b / n`` to ``(i + 1) * b / n``.
  """
  i, n = jax.process_index(), jax.process_count()
  if batch_size % n:
    raise ConfigError(
      f"a batch of {batch_size} does not split over {n} " "processes."
    )
  return i * batch_size // n, (i + 1) * batch_size // n
