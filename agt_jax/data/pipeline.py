"""Grain pipelines: label-only batches -> images -> devices.

A sampler from :mod:`agt_jax.data.samplers` decides *which* images form step
``t``'s batch; :class:`LoadAndAugment` attaches the pixels with a per-example
rng derived from ``(seed, t, slot)``, so a batch is the same whether it is
produced in-process, by ``mp_prefetch`` workers, or after a resume.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import os
import threading
import time

import grain
import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from agt_jax.data import images


@dataclasses.dataclass(frozen=True)
class LoadAndAugment:
  """``batch -> batch + {"image": uint8 [b, crop, crop, 3]}``.

  ``train=True``: ``augment="crop_flip"``, random crop + horizontal flip
  (AGT, paper 000); ``"flip_rotate"``, flips and a ±15° rotation before the
  centre crop (paper 001). Otherwise a centre crop.
  A host's slice of a batch (:func:`agt_jax.data.samplers.host_slice`)
  carries each row's global ``"slot"``, which seeds its augmentation and is
  dropped here.
  """

  source: object  # FileImageSource / ArrayImageSource / any index -> image
  crop: int
  train: bool
  seed: int = 0
  augment: str = "crop_flip"

  def __call__(self, step: int, batch: dict) -> dict:
    out = []
    index = np.asarray(batch["index"])
    batch = dict(batch)
    slots = batch.pop("slot", np.arange(len(index)))
    for slot, i in zip(slots, index):
      image = self.source[int(i)]
      if self.train:
        rng = np.random.default_rng((self.seed, int(step), int(slot)))
        if self.augment == "flip_rotate":
          out.append(images.flip_rotate(image, self.crop, rng))
        else:
          out.append(images.random_crop_flip(image, self.crop, rng))
      else:
        out.append(images.center_crop(image, self.crop))
    return {**batch, "image": np.stack(out)}


def with_images(
  batches: grain.MapDataset,
  source,
  *,
  crop: int,
  train: bool,
  seed: int = 0,
  augment: str = "crop_flip",
) -> grain.MapDataset:
  """Attaches (augmented) images to every batch of a sampler dataset."""
  if augment not in images.AUGMENTATIONS:
    raise ValueError(
      f"augment must be one of {images.AUGMENTATIONS}, got " f"{augment!r}."
    )
  return batches.map_with_index(
    LoadAndAugment(source, crop, train, seed, augment)
  )


def eval_batches(
  num_examples: int, labels, *, batch_size: int
) -> grain.MapDataset:
  """Sequential evaluation batches; the last one is padded with index 0 and
  carries ``"valid"`` so metrics skip the padding."""
  labels = np.asarray(labels)
  steps = -(-num_examples // batch_size)

  def make(t):
    idx = np.arange(t * batch_size, (t + 1) * batch_size)
    valid = idx < num_examples
    idx = np.where(valid, idx, 0)
    return {"index": idx, "labels": labels[idx], "valid": valid}

  return grain.MapDataset.range(steps).map(make)


def to_iterator(
  ds: grain.MapDataset, *, workers: int = 0, prefetch: int = 2
) -> grain.DatasetIterator:
  """An iterator with ``get_state``/``set_state`` (orbax-checkpointable via
  ``grain.checkpoint``); ``workers > 0`` decodes in worker processes."""
  it_ds = ds.to_iter_dataset(
    grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
  )
  if workers > 0:
    from absl import flags

    if not flags.FLAGS.is_parsed():
      # Grain reads absl flags in its workers; scripts without absl.app
      # never parse them.
      flags.FLAGS.mark_as_parsed()
    it_ds = it_ds.mp_prefetch(
      grain.MultiprocessingOptions(
        num_workers=workers, per_worker_buffer_size=prefetch
      ),
      worker_init_fn=functools.partial(exit_with_parent, os.getpid()),
    )
  return iter(it_ds)


def exit_with_parent(parent_pid: int, *_worker) -> None:
  """``mp_prefetch``'s worker initialiser: a daemon thread that ends the
  worker once the training process ``parent_pid`` is gone.

  A training process killed outright (SIGKILL, the OOM killer, a
  preempted job) never closes its iterator, and its decode workers would
  live on as orphans, each holding its buffers, until the machine restarts.
  The thread checks the parent once a second."""

  def watch():
    while os.getppid() == parent_pid:
      time.sleep(1.0)
    os._exit(0)

  threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def data_sharding(mesh: jax.sharding.Mesh, axis: str = "data") -> NamedSharding:
  return NamedSharding(mesh, P(axis))


def host_batches(
  batches: grain.MapDataset,
  *,
  process_index: int | None = None,
  process_count: int | None = None,
) -> grain.MapDataset:
  """This process's rows of every global batch (all of them on one
  process), taken before images are attached: a host decodes only its own
  images."""
  from agt_jax.data import samplers

  n = jax.process_count() if process_count is None else process_count
  if n == 1:
    return batches
  i = jax.process_index() if process_index is None else process_index
  return samplers.host_slice(batches, process_index=i, process_count=n)


def global_batch(batch: dict, sharding: NamedSharding) -> dict:
  """Makes a host batch part of a global batch on the mesh: arrays are
  split along the batch axis (this process's rows, see
  :func:`host_batches`), scalars (e.g. ``group``) replicated."""
  replicated = NamedSharding(sharding.mesh, P())
  return {
    k: jax.make_array_from_process_local_data(
      sharding if np.ndim(v) else replicated, np.asarray(v)
    )
    for k, v in batch.items()
  }


class DevicePrefetch:
  """Global device batches, ``depth`` ahead of the consumer.

  Each host batch is put on the mesh (:func:`global_batch`) as soon as a
  slot frees, so its transfer overlaps the steps before it and a step never
  waits on the host for its input. Checkpointable like the Grain iterator it
  wraps (``grain.checkpoint`` takes any object with these methods):
  ``get_state`` is the position of the next batch the consumer has not
  taken, not of the batches queued ahead, so a resume reads exactly the
  batches a run without prefetch would.
  """

  def __init__(self, iterator, sharding: NamedSharding, depth: int = 2):
    self._it, self._sharding, self._depth = iterator, sharding, max(depth, 1)
    self._queue: collections.deque = collections.deque()

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    while len(self._queue) < self._depth:
      state = self._it.get_state()
      try:
        host = next(self._it)
      except StopIteration:
        break
      self._queue.append((state, global_batch(host, self._sharding)))
    if not self._queue:
      raise StopIteration
    return self._queue.popleft()[1]

  def get_state(self) -> bytes:
    state = self._queue[0][0] if self._queue else self._it.get_state()
    return json.dumps(state).encode()

  def set_state(self, state: bytes) -> None:
    self._queue.clear()
    self._it.set_state(json.loads(state))

  def start_prefetch(self) -> None:
    start = getattr(self._it, "start_prefetch", None)
    if start is not None:
      start()

  def close(self) -> None:
    self._queue.clear()
    close = getattr(self._it, "close", None)
    if close is not None:
      close()
