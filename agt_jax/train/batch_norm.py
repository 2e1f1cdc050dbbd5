"""Batch-norm statistics recomputed on natural batches ("precise BN").

The AGT teacher trains on group-mixed batches (half of each batch from one
group), so its running batch-norm statistics describe those batches, not
the images it is scored on. :func:`recalibrate` replaces every layer's
``mean``/``var`` by their population values over instance-balanced batches
of the training split: the train-mode forward (each layer normalised by its
batch statistics, as in training) is run on ``K`` batches, and each layer's
input moments are averaged,

.. math::
  \\mu = \\frac{1}{K}\\sum_k \\mathbb{E}_k[x], \\qquad
  \\sigma^2 = \\frac{1}{K}\\sum_k \\mathbb{E}_k[x^2] - \\mu^2

(equal batch sizes, so this is the mean and biased variance over all their
rows and positions, as flax's ``BatchNorm`` defines them). Reference: Wu and
Johnson, *Rethinking "Batch" in BatchNorm*, 2021 (precise BN).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn


def _feature_axes(module: nn.BatchNorm, ndim: int) -> tuple[int, ...]:
  axes = module.axis if isinstance(module.axis, tuple) else (module.axis,)
  return tuple(a % ndim for a in axes)


def batch_norm_moments(
  model: nn.Module, variables: dict, images
) -> dict[tuple[str, ...], tuple[jax.Array, ...]]:
  """``{layer path: (E[x], E[x^2])}`` of every ``nn.BatchNorm`` input in a
  train-mode forward of ``images`` (statistics over the whole batch, which
  under ``jit`` with a batch-sharded input is the global batch)."""
  records = {}

  def intercept(next_fun, args, kwargs, context):
    module = context.module
    if isinstance(module, nn.BatchNorm) and context.method_name == "__call__":
      x = (args[0] if args else kwargs["x"]).astype(jnp.float32)
      keep = _feature_axes(module, x.ndim)
      red = tuple(i for i in range(x.ndim) if i not in keep)
      records[tuple(module.path)] = (x.mean(red), (x * x).mean(red))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(intercept):
    model.apply(variables, images, train=True, mutable=["batch_stats"])
  return records


def moments_fn(model: nn.Module):
  """The jitted :func:`batch_norm_moments` of ``model`` (build once, pass
  to every :func:`recalibrate` of that model)."""
  return jax.jit(functools.partial(batch_norm_moments, model))


def recalibrate(
  model: nn.Module, variables: dict, image_batches, *, fn=None
) -> dict:
  """``variables`` with every batch-norm layer's ``mean``/``var`` replaced
  by the population moments over ``image_batches`` (an iterable of image
  arrays, device-placed or not; all the same size).

  Raises:
    ValueError: no batch, or a layer whose statistics are not in
      ``variables["batch_stats"]``.
  """
  fn = fn or moments_fn(model)
  sums, k = None, 0
  for images in image_batches:
    moments = jax.device_get(fn(variables, images))
    moments = {
      p: tuple(np.asarray(m, np.float64) for m in v) for p, v in moments.items()
    }
    sums = (
      moments
      if sums is None
      else {
        p: tuple(a + b for a, b in zip(sums[p], v)) for p, v in moments.items()
      }
    )
    k += 1
  if not k:
    raise ValueError("recalibrate needs at least one batch of images.")
  stats = jax.tree.map(np.asarray, jax.device_get(variables["batch_stats"]))
  stats = _thaw(stats)
  for path, (s1, s2) in sums.items():
    node = stats
    for name in path:
      if not isinstance(node, dict) or name not in node:
        raise ValueError(
          f"batch-norm layer {'/'.join(path)} has no "
          "statistics in variables['batch_stats']."
        )
      node = node[name]
    mean = s1 / k
    var = np.maximum(s2 / k - mean * mean, 0.0)
    node["mean"] = mean.astype(node["mean"].dtype)
    node["var"] = var.astype(node["var"].dtype)
  return {**variables, "batch_stats": stats}


def _thaw(tree):
  if isinstance(tree, dict) or hasattr(tree, "items"):
    return {k: _thaw(v) for k, v in tree.items()}
  return tree
