"""Small pieces the encoders share: stochastic depth and the patchify stem
(a leaf module: flax only)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn


def drop_path(module: nn.Module, x, rate: float, train: bool):
  """Stochastic depth (torchvision's "row" mode): each image's branch is
  zeroed with probability ``rate`` and the survivors scaled by
  ``1 / (1 - rate)``; only in training and only when the step supplies a
  ``dropout`` rng (steps without one run every branch)."""
  if not train or rate == 0.0 or not module.has_rng("dropout"):
    return x
  keep = jax.random.bernoulli(
    module.make_rng("dropout"), 1.0 - rate, (x.shape[0],) + (1,) * (x.ndim - 1)
  )
  return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def patchify_stem(x, width: int, patch: int, *, eps: float, dtype):
  """The ``patch`` x ``patch`` / ``patch`` convolution and LayerNorm that
  open ConvNeXt and Swin (``stem_conv``, ``stem_norm`` in the calling
  module)."""
  x = nn.Conv(
    width,
    (patch, patch),
    (patch, patch),
    padding="VALID",
    dtype=dtype,
    name="stem_conv",
  )(x)
  return nn.LayerNorm(epsilon=eps, dtype=dtype, name="stem_norm")(x)
