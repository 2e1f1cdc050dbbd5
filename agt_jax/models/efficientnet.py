"""EfficientNet-B0 (Tan & Le 2019) and EfficientNetV2-M (Tan & Le 2021) in
flax linen, torchvision's layout, so torchvision's weights import by name
(:func:`agt_jax.models.weights.from_torchvision`).

A block's layers are named ``block_0``, ``block_1``, ... in torchvision's
``block`` order (expand, depthwise, squeeze-excite, project for MBConv;
fused expand, project for FusedMBConv), each a ``conv``/``bn`` pair or the
squeeze-excite's ``fc1``/``fc2``.

Stochastic depth (torchvision's "row" mode, the probability rising
linearly with the block index to 0.2) is applied in training when the step
supplies a ``dropout`` rng (the transfer trainer does); steps that train
without one (the AGT teacher and student) run every block, as in
evaluation. The classifier's dropout is the heads' business.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from agt_jax.models.cam import CamPoint
from agt_jax.models.layers import drop_path
from agt_jax.models.resnet import normalize_images


@dataclasses.dataclass(frozen=True)
class Stage:
  """One row of the papers' tables: ``layers`` blocks of ``kind``
  (``mb`` | ``fused``), the first with ``stride``."""

  kind: str
  expand: int
  kernel: int
  stride: int
  channels_in: int
  channels_out: int
  layers: int


def make_divisible(v: float, divisor: int = 8) -> int:
  """torchvision's (and the TF reference's) channel rounding."""
  new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
  return new_v + divisor if new_v < 0.9 * v else new_v


B0 = tuple(
  Stage("mb", *row)
  for row in (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
  )
)
V2_M = (
  Stage("fused", 1, 3, 1, 24, 24, 3),
  Stage("fused", 4, 3, 2, 24, 48, 5),
  Stage("fused", 4, 3, 2, 48, 80, 5),
  Stage("mb", 4, 3, 2, 80, 160, 7),
  Stage("mb", 6, 3, 1, 160, 176, 14),
  Stage("mb", 6, 3, 2, 176, 304, 18),
  Stage("mb", 6, 3, 1, 304, 512, 5),
)
# Tests: both block kinds, both strides, a residual in each kind.
TINY = (
  Stage("fused", 1, 3, 1, 8, 8, 2),
  Stage("fused", 2, 3, 2, 8, 16, 1),
  Stage("mb", 2, 3, 2, 16, 16, 2),
  Stage("mb", 3, 5, 1, 16, 24, 1),
)


class ConvBN(nn.Module):
  """Conv (no bias, ``(k - 1) // 2`` padding) -> BatchNorm -> SiLU
  (``act=False``: none): torchvision's ``Conv2dNormActivation``."""

  features: int
  kernel: int = 1
  stride: int = 1
  groups: int = 1
  act: bool = True
  conv: Any = nn.Conv
  norm: Any = nn.BatchNorm

  @nn.compact
  def __call__(self, x):
    p = (self.kernel - 1) // 2
    x = self.conv(
      self.features,
      (self.kernel, self.kernel),
      (self.stride, self.stride),
      padding=((p, p), (p, p)),
      feature_group_count=self.groups,
      name="conv",
    )(x)
    x = self.norm(name="bn")(x)
    return nn.silu(x) if self.act else x


class SqueezeExcite(nn.Module):
  """``x * sigmoid(fc2(silu(fc1(mean_hw(x)))))`` with 1x1 convolutions
  (biased), as torchvision's ``SqueezeExcitation``."""

  squeeze: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = nn.Conv(self.squeeze, (1, 1), dtype=self.dtype, name="fc1")(s)
    s = nn.Conv(x.shape[-1], (1, 1), dtype=self.dtype, name="fc2")(nn.silu(s))
    return x * nn.sigmoid(s)


class Block(nn.Module):
  """MBConv or FusedMBConv (``stage.kind``), with the residual when the
  stride is 1 and the widths match."""

  stage: Stage
  channels_in: int
  stride: int
  drop_rate: float
  conv: Any
  norm: Any
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    s = self.stage
    layer = functools.partial(ConvBN, conv=self.conv, norm=self.norm)
    hidden = make_divisible(self.channels_in * s.expand)
    y, k = x, 0

    def name():
      nonlocal k
      k += 1
      return f"block_{k - 1}"

    if s.kind == "fused":
      if hidden != self.channels_in:
        y = layer(hidden, s.kernel, self.stride, name=name())(y)
        y = layer(s.channels_out, act=False, name=name())(y)
      else:
        y = layer(s.channels_out, s.kernel, self.stride, name=name())(y)
    else:
      if hidden != self.channels_in:
        y = layer(hidden, name=name())(y)
      y = layer(hidden, s.kernel, self.stride, groups=hidden, name=name())(y)
      squeeze = max(1, self.channels_in // 4)
      y = SqueezeExcite(squeeze, self.dtype, name=name())(y)
      y = layer(s.channels_out, act=False, name=name())(y)
    if self.stride == 1 and self.channels_in == s.channels_out:
      y = drop_path(self, y, self.drop_rate, train) + x
    return y


class EfficientNet(nn.Module):
  """Encoder: images ``[N, H, W, 3]`` (uint8 or [0, 255]) -> pooled
  features ``[N, D]``; ``pool=False`` returns the last map.

  Attributes:
    stages: the block table (:data:`B0`, :data:`V2_M`, :data:`TINY`).
    last_channel: width of the final 1x1 conv (4x the last stage's when
      None, as B0).
    eps: BatchNorm epsilon (1e-5 for B0, 1e-3 for V2, as torchvision).
    drop_path: the last block's stochastic-depth rate.
  """

  stages: Sequence[Stage] = B0
  last_channel: int | None = None
  eps: float = 1e-5
  drop_path: float = 0.2
  dtype: Any = jnp.float32
  axis_name: str | None = None
  pool: bool = True

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
    norm = functools.partial(
      nn.BatchNorm,
      use_running_average=not train,
      momentum=0.9,
      epsilon=self.eps,
      dtype=self.dtype,
      axis_name=self.axis_name,
    )
    x = normalize_images(x, self.dtype)
    x = ConvBN(
      self.stages[0].channels_in, 3, 2, conv=conv, norm=norm, name="stem"
    )(x)
    total = sum(s.layers for s in self.stages)
    index = 0
    for i, stage in enumerate(self.stages):
      for j in range(stage.layers):
        x = Block(
          stage,
          stage.channels_in if j == 0 else stage.channels_out,
          stage.stride if j == 0 else 1,
          self.drop_path * index / total,
          conv,
          norm,
          self.dtype,
          name=f"stage{i + 1}_{j}",
        )(x, train=train)
        index += 1
    last = self.last_channel or 4 * self.stages[-1].channels_out
    x = ConvBN(last, conv=conv, norm=norm, name="head")(x)
    x = CamPoint(name="cam")(x)
    if not self.pool:
      return x
    return jnp.mean(x, axis=(1, 2)).astype(jnp.float32)


EfficientNetB0 = functools.partial(EfficientNet, stages=B0, eps=1e-5)
EfficientNetV2M = functools.partial(
  EfficientNet, stages=V2_M, last_channel=1280, eps=1e-3
)
EfficientNetTiny = functools.partial(
  EfficientNet, stages=TINY, last_channel=32, eps=1e-3
)


def torchvision_path(key: str, stages: Sequence[Stage]) -> tuple | None:
  """Our flax module path of a torchvision EfficientNet state-dict module
  (``features.S.B.block.K.{0|1|fc1|fc2}``, the stem ``features.0.*`` and
  the head ``features.<last>.*``), or None for the classifier."""
  parts = key.split(".")
  if parts[0] != "features":
    return None
  s = int(parts[1])
  leaf = {"0": "conv", "1": "bn"}
  if s == 0:
    return ("stem", leaf[parts[2]])
  if s == len(stages) + 1:
    return ("head", leaf[parts[2]])
  _, _, b, block, k, sub = parts
  if block != "block":
    raise KeyError(f"unexpected EfficientNet module {key!r}")
  return (f"stage{s}_{b}", f"block_{k}", leaf.get(sub, sub))


def stages_of(state_dict: dict) -> Sequence[Stage]:
  """Which table a torchvision EfficientNet state dict was built from,
  by its stage count and first widths."""
  n = 1 + max(
    int(k.split(".")[1]) for k in state_dict if k.startswith("features.")
  )
  stem = tuple(state_dict["features.0.0.weight"].shape)[0]
  for table in (B0, V2_M, TINY):
    if n == len(table) + 2 and stem == table[0].channels_in:
      return table
  raise ValueError(
    f"an EfficientNet state dict with {n - 2} stages and a {stem}-channel "
    "stem: not B0, V2-M or the tiny test layout."
  )


__all__ = [
  "B0",
  "TINY",
  "V2_M",
  "EfficientNet",
  "EfficientNetB0",
  "EfficientNetTiny",
  "EfficientNetV2M",
  "Stage",
  "make_divisible",
]
