"""ConvNeXt (Liu et al. 2022) and ConvNeXt V2 (Woo et al. 2023) in flax
linen. ConvNeXt keeps torchvision's layout, so torchvision's
``convnext_tiny`` / ``convnext_base`` weights import by name
(:func:`agt_jax.models.weights.from_torchvision`); ConvNeXt V2 imports from
timm's ``convnextv2_*`` state dicts (:func:`agt_jax.models.weights.from_timm`).

A 4x4/4 patchify stem with LayerNorm; stages of blocks (7x7 depthwise
conv, LayerNorm, 4x MLP with GELU, a learned per-channel layer scale,
stochastic depth, residual); LayerNorm + 2x2/2 conv between stages; the
pooled features pass the final LayerNorm (torchvision's ``classifier.0``).
Stochastic depth runs in training when the step supplies a ``dropout`` rng,
as EfficientNet's.

ConvNeXt V2 is the same network with Global Response Normalisation after
the MLP's GELU and no layer scale (timm's ``use_grn=True,
ls_init_value=None``). Left out: V2's masked-autoencoder pretraining (sparse
convolutions); the FCMAE-pretrained and fine-tuned weights import.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from agt_jax.models.cam import CamPoint
from agt_jax.models.layers import drop_path, patchify_stem
from agt_jax.models.resnet import normalize_images

# (width, blocks) per stage; torchvision's block settings.
TINY_STAGES = ((96, 3), (192, 3), (384, 9), (768, 3))
BASE_STAGES = ((128, 3), (256, 3), (512, 27), (1024, 3))
TEST_STAGES = ((16, 1), (32, 2))
# timm builds four stages.
V2_TEST_STAGES = ((8, 1), (16, 1), (24, 2), (32, 1))


class GlobalResponseNorm(nn.Module):
  """GRN (ConvNeXt V2, Eq. 1-3) on ``[N, H, W, C]``: each channel's L2 norm
  over the map, divided by its mean over channels, rescales the input:
  ``x + bias + scale * x * (g / (mean_c g + eps))`` with ``g = ||x||_HW``.
  ``scale`` and ``bias`` start at zero (identity), as timm's."""

  eps: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.zeros, (c,))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    x32 = x.astype(jnp.float32)
    sq = jnp.sum(jnp.square(x32), axis=(1, 2), keepdims=True)
    # The norm's gradient is undefined at 0 (a channel that is zero
    # everywhere); there it is 0, as torch's.
    pos = sq > 0
    g = jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)
    n = g / (jnp.mean(g, axis=-1, keepdims=True) + self.eps)
    return (x32 + bias + scale * (x32 * n)).astype(self.dtype)


class Block(nn.Module):
  dim: int
  drop_rate: float
  dtype: Any = jnp.float32
  v2: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    y = nn.Conv(
      self.dim,
      (7, 7),
      padding=((3, 3), (3, 3)),
      feature_group_count=self.dim,
      dtype=self.dtype,
      name="dwconv",
    )(x)
    y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm")(y)
    y = nn.Dense(4 * self.dim, dtype=self.dtype, name="pwconv1")(y)
    y = nn.gelu(y, approximate=False)
    if self.v2:
      y = GlobalResponseNorm(dtype=self.dtype, name="grn")(y)
    y = nn.Dense(self.dim, dtype=self.dtype, name="pwconv2")(y)
    if self.v2:  # no layer scale
      return x + drop_path(self, y, self.drop_rate, train)
    gamma = self.param(
      "layer_scale", nn.initializers.constant(1e-6), (self.dim,)
    )
    return x + drop_path(self, gamma.astype(y.dtype) * y, self.drop_rate, train)


class ConvNeXt(nn.Module):
  """Encoder: images ``[N, H, W, 3]`` (uint8 or [0, 255]) -> pooled
  features after the final LayerNorm ``[N, D]``; ``pool=False`` returns the
  last stage's map (before the pooling and its norm).

  Attributes:
    stages: ``(width, blocks)`` per stage.
    drop_path: the last block's stochastic-depth rate (torchvision: 0.1
      for tiny, 0.5 for base).
    v2: ConvNeXt V2's blocks (GRN, no layer scale).
  """

  stages: Sequence[tuple[int, int]] = TINY_STAGES
  drop_path: float = 0.1
  v2: bool = False
  dtype: Any = jnp.float32
  axis_name: str | None = None  # no batch norm: accepted for the interface
  pool: bool = True

  @nn.compact
  def __call__(self, x, train: bool = False):
    ln = functools.partial(nn.LayerNorm, epsilon=1e-6, dtype=self.dtype)
    x = normalize_images(x, self.dtype)
    x = patchify_stem(x, self.stages[0][0], 4, eps=1e-6, dtype=self.dtype)
    total = sum(n for _, n in self.stages)
    index = 0
    for i, (width, blocks) in enumerate(self.stages):
      if i > 0:
        x = ln(name=f"down{i}_norm")(x)
        x = nn.Conv(
          width,
          (2, 2),
          (2, 2),
          padding="VALID",
          dtype=self.dtype,
          name=f"down{i}_conv",
        )(x)
      for j in range(blocks):
        rate = self.drop_path * index / max(total - 1, 1)
        x = Block(width, rate, self.dtype, self.v2, name=f"stage{i + 1}_{j}")(
          x, train=train
        )
        index += 1
    x = CamPoint(name="cam")(x)
    if not self.pool:
      return x
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    return ln(name="norm")(x).astype(jnp.float32)


ConvNeXtTiny = functools.partial(ConvNeXt, stages=TINY_STAGES, drop_path=0.1)
ConvNeXtBase = functools.partial(ConvNeXt, stages=BASE_STAGES, drop_path=0.5)
ConvNeXtTest = functools.partial(ConvNeXt, stages=TEST_STAGES, drop_path=0.1)
# ConvNeXt V2-Base: drop path 0.1, the V2 authors' fine-tuning rate at 224 px.
ConvNeXtV2Base = functools.partial(
  ConvNeXt, stages=BASE_STAGES, drop_path=0.1, v2=True
)
ConvNeXtV2Test = functools.partial(
  ConvNeXt, stages=V2_TEST_STAGES, drop_path=0.1, v2=True
)


def torchvision_path(key: str) -> tuple | None:
  """``(our module path, leaf kind)`` of a torchvision ConvNeXt state-dict
  entry; None for the classifier's linear layer."""
  m = re.fullmatch(r"features\.0\.([01])\.(weight|bias)", key)
  if m:
    return ("stem_conv" if m.group(1) == "0" else "stem_norm",), m.group(2)
  m = re.fullmatch(r"features\.(\d+)\.(\d+)\.(.+)", key)
  if m:
    f, j, rest = int(m.group(1)), m.group(2), m.group(3)
    if f % 2 == 1:  # a stage
      stage = f"stage{(f + 1) // 2}_{j}"
      if rest == "layer_scale":
        return (stage,), "layer_scale"
      sub = {"0": "dwconv", "2": "norm", "3": "pwconv1", "5": "pwconv2"}
      b = re.fullmatch(r"block\.(\d)\.(weight|bias)", rest)
      if b is None or b.group(1) not in sub:
        raise KeyError(f"unexpected ConvNeXt entry {key!r}")
      return (stage, sub[b.group(1)]), b.group(2)
    i, leaf = f // 2, rest  # a downsample: features.{2i}.{0: norm, 1: conv}
    return (f"down{i}_{'norm' if j == '0' else 'conv'}",), leaf
  m = re.fullmatch(r"classifier\.0\.(weight|bias)", key)
  if m:
    return ("norm",), m.group(1)
  if key.startswith("classifier."):
    return None
  raise KeyError(f"unexpected ConvNeXt entry {key!r}")


def timm_path(key: str) -> tuple | None:
  """``(our module path, leaf kind)`` of a timm ConvNeXt (V1 or V2)
  state-dict entry; None for the classifier's linear layer."""
  m = re.fullmatch(r"stem\.([01])\.(weight|bias)", key)
  if m:
    return ("stem_conv" if m.group(1) == "0" else "stem_norm",), m.group(2)
  m = re.fullmatch(r"stages\.(\d+)\.downsample\.([01])\.(weight|bias)", key)
  if m:
    i = int(m.group(1))
    return (f"down{i}_{'norm' if m.group(2) == '0' else 'conv'}",), m.group(3)
  m = re.fullmatch(r"stages\.(\d+)\.blocks\.(\d+)\.(.+)\.(weight|bias)", key)
  if m:
    stage = f"stage{int(m.group(1)) + 1}_{m.group(2)}"
    sub = {
      "conv_dw": "dwconv",
      "norm": "norm",
      "mlp.fc1": "pwconv1",
      "mlp.grn": "grn",
      "mlp.fc2": "pwconv2",
    }.get(m.group(3))
    if sub is None:
      raise KeyError(f"unexpected ConvNeXt entry {key!r}")
    return (stage, sub), m.group(4)
  m = re.fullmatch(r"stages\.(\d+)\.blocks\.(\d+)\.gamma", key)
  if m:
    return (f"stage{int(m.group(1)) + 1}_{m.group(2)}",), "layer_scale"
  m = re.fullmatch(r"head\.norm\.(weight|bias)", key)
  if m:
    return ("norm",), m.group(1)
  if key.startswith("head."):
    return None
  raise KeyError(f"unexpected ConvNeXt entry {key!r}")


__all__ = [
  "BASE_STAGES",
  "TEST_STAGES",
  "TINY_STAGES",
  "V2_TEST_STAGES",
  "ConvNeXt",
  "ConvNeXtBase",
  "ConvNeXtTest",
  "ConvNeXtTiny",
  "ConvNeXtV2Base",
  "ConvNeXtV2Test",
  "GlobalResponseNorm",
  "timm_path",
]
