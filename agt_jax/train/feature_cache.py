"""Features of a frozen encoder, computed once per (encoder, images, crop).

Heads trained on a frozen encoder (paper 001's Task 1.2, paper 002's
adapters) need the encoder's features of every image of a split, with
augmentation off. They are stored under the cache directory, keyed by the
encoder's identity (a hash of its weights and batch statistics, its name),
the crop, the dataset and the exact image indices, so a rerun reads them
back in a moment and any change of encoder or split recomputes them.
"""

from __future__ import annotations

import hashlib
import json
import pathlib

import jax
import numpy as np

from agt_jax import io
from agt_jax.train import evaluation

__all__ = ["encoder_fingerprint", "features"]


def encoder_fingerprint(variables: dict, *, model: str, crop: int) -> str:
  """sha256 of the encoder's parameters and batch statistics (every leaf's
  path, dtype, shape and bytes), its name and the crop."""
  h = hashlib.sha256(json.dumps({"model": model, "crop": crop}).encode())
  for key in ("params", "batch_stats"):
    tree = jax.device_get(variables.get(key, {}))
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
      a = np.ascontiguousarray(leaf)
      h.update(f"{key}{jax.tree_util.keystr(path)}{a.dtype}{a.shape}".encode())
      h.update(a.tobytes())
  return h.hexdigest()


def features(
  model,
  variables,
  source,
  indices,
  labels,
  config,
  mesh,
  *,
  cache_dir,
  dataset: str,
  model_name: str,
) -> np.ndarray:
  """``[len(indices), d]`` eval-mode features, from the cache when the same
  encoder has already seen the same images at the same crop."""
  h = hashlib.sha256(
    encoder_fingerprint(variables, model=model_name, crop=config.crop).encode()
  )
  h.update(dataset.encode())
  h.update(np.ascontiguousarray(np.asarray(indices, np.int64)).tobytes())
  path = pathlib.Path(cache_dir) / "features" / f"{h.hexdigest()[:32]}.npy"
  if path.exists():
    return np.load(path)
  _, feats = evaluation.predict(
    model,
    variables,
    source,
    indices,
    labels,
    config,
    mesh,
    "features (cached after)",
  )
  path.parent.mkdir(parents=True, exist_ok=True)
  io.atomic_write(path, lambda f: np.save(f, feats))
  return feats
