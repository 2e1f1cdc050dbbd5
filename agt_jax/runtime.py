"""What every phase and tool shares at run time: the device mesh,
replication onto it, progress bars with ETA, and the metrics log."""

from __future__ import annotations

import os
import pathlib
import sys

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from agt_jax import distributed, io
from agt_jax.errors import ConfigError

__all__ = [
  "MetricWriter",
  "enable_compilation_cache",
  "make_mesh",
  "progress",
  "replicate",
]

XLA_CACHE_ENV = "AGT_JAX_XLA_CACHE"


def enable_compilation_cache() -> str | None:
  """Keeps compiled programs across runs (jax's persistent compilation
  cache), so a second fold, seed or run of the same shapes skips XLA's
  compilation: ``$AGT_JAX_XLA_CACHE``, default ``<cache>/xla`` beside the
  rendered data (:func:`agt_jax.io.cache_dir`); ``off`` disables it. A
  directory jax was already given (``JAX_COMPILATION_CACHE_DIR``) is kept.
  Returns the directory in use, or None. Call before the first compile."""
  given = jax.config.jax_compilation_cache_dir
  if given:
    return given
  where = os.environ.get(XLA_CACHE_ENV) or str(io.cache_dir() / "xla")
  if where.strip().lower() in ("off", "0", "none", "false"):
    return None
  jax.config.update("jax_compilation_cache_dir", where)
  return where


class MetricWriter:
  """Appends one JSON line per call to ``metrics.jsonl``; only process 0
  of a multi-process run writes (every process calls it)."""

  def __init__(self, path: pathlib.Path, *, primary: bool | None = None):
    self.path = path
    self.primary = distributed.is_primary() if primary is None else primary

  def write(self, record: dict) -> None:
    if not self.primary:
      return
    clean = {
      k: (np.asarray(v).tolist() if hasattr(v, "shape") else v)
      for k, v in record.items()
    }
    io.append_jsonl(self.path, clean)

  def truncate(self, phase: str, step: int) -> None:
    """Drops ``phase`` (and ``eval_<phase>``) records after ``step``: a
    resumed phase rewrites the steps it lost, and they must not appear
    twice. A torn line is dropped. Rewritten atomically."""
    if not self.primary or not self.path.exists():
      return
    io.rewrite_jsonl(
      self.path,
      [
        r
        for r in io.read_jsonl(self.path)
        if not (
          r.get("phase") in (phase, f"eval_{phase}") and r.get("step", 0) > step
        )
      ],
    )


def progress(total: int, initial: int, desc: str):
  """A progress bar with ETA on process 0; other processes print one line
  instead (and get ``None``)."""
  if not distributed.is_primary():
    print(
      f"process {jax.process_index()} of {jax.process_count()}: {desc} "
      f"from step {initial} of {total}",
      file=sys.stderr,
      flush=True,
    )
    return None
  try:
    from tqdm.auto import tqdm

    return tqdm(
      total=total,
      initial=initial,
      desc=desc,
      unit="step",
      dynamic_ncols=True,
      mininterval=1.0,
    )
  except ImportError:
    return None


def make_mesh(
  batch_size: int, eval_batch_size: int | None = None
) -> jax.sharding.Mesh:
  """A 1-D ``data`` mesh over every device of every process.

  Raises :class:`ConfigError` when a batch does not split evenly over the
  devices (rather than silently leaving some idle), naming sizes that do.
  Devices are listed process by process, so each process feeds a
  contiguous block of rows (:func:`agt_jax.distributed.host_rows`).
  """
  n = jax.device_count()
  for key, size in (
    ("batch_size", batch_size),
    ("eval_batch_size", eval_batch_size),
  ):
    if size is not None and size % n:
      lower, upper = max(n, size - size % n), size - size % n + n
      raise ConfigError(
        f"{key}={size} does not split over the {n} devices; use a "
        f"multiple of {n} (e.g. --set {key}={lower} or {upper}), or "
        "expose fewer devices (CUDA_VISIBLE_DEVICES)."
      )
  devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
  return jax.make_mesh(
    (n,), ("data",), axis_types=(AxisType.Auto,), devices=devices
  )


def local_mesh() -> jax.sharding.Mesh:
  """A 1-D ``data`` mesh over this process's devices: inference on one
  host (the predictor, the exporter's check) needs no other process."""
  devices = jax.local_devices()
  return jax.make_mesh(
    (len(devices),), ("data",), axis_types=(AxisType.Auto,), devices=devices
  )


def replicate(tree, mesh):
  return jax.device_put(tree, NamedSharding(mesh, P()))
