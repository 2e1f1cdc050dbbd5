"""ResNet encoders (He et al. 2016) in flax linen, torchvision's layout.

Convolution and normalisation are injected (``conv``, ``norm`` partials), so
tests use a tiny variant and BatchNorm can sync across devices through
``axis_name`` (unneeded under jit + NamedSharding, where batch statistics are
already global).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from agt_jax.models.cam import CamPoint

ModuleDef = Any


class BasicBlock(nn.Module):
  """Two 3x3 convolutions (ResNet-18/34)."""

  filters: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  expansion = 1

  @nn.compact
  def __call__(self, x):
    residual = x
    y = self.conv(
      self.filters,
      (3, 3),
      (self.strides, self.strides),
      padding=((1, 1), (1, 1)),
      name="conv1",
    )(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = self.conv(self.filters, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(
      y
    )
    y = self.norm(name="bn2", scale_init=nn.initializers.zeros_init())(y)
    if residual.shape != y.shape:
      residual = self.conv(
        self.filters,
        (1, 1),
        (self.strides, self.strides),
        name="downsample_conv",
      )(residual)
      residual = self.norm(name="downsample_bn")(residual)
    return nn.relu(residual + y)


class Bottleneck(nn.Module):
  """1x1 - 3x3 (strided, as torchvision v1.5) - 1x1 (ResNet-50+)."""

  filters: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  expansion = 4

  @nn.compact
  def __call__(self, x):
    residual = x
    y = self.conv(self.filters, (1, 1), name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = self.conv(
      self.filters,
      (3, 3),
      (self.strides, self.strides),
      padding=((1, 1), (1, 1)),
      name="conv2",
    )(y)
    y = nn.relu(self.norm(name="bn2")(y))
    y = self.conv(self.filters * 4, (1, 1), name="conv3")(y)
    y = self.norm(name="bn3", scale_init=nn.initializers.zeros_init())(y)
    if residual.shape != y.shape:
      residual = self.conv(
        self.filters * 4,
        (1, 1),
        (self.strides, self.strides),
        name="downsample_conv",
      )(residual)
      residual = self.norm(name="downsample_bn")(residual)
    return nn.relu(residual + y)


class ResNet(nn.Module):
  """Encoder: images `[N, H, W, 3]` (uint8 or float) -> features `[N, D]`.

  Attributes:
    stage_sizes: blocks per stage.
    block_cls: :class:`BasicBlock` or :class:`Bottleneck`.
    width: filters of the first stage (64 in the paper's ResNet-50).
    dtype: compute dtype (e.g. bfloat16); parameters stay float32.
    axis_name: BatchNorm cross-device axis under ``shard_map``/``pmap``.
    stem_pool: the 3x3/2 max-pool after the 7x7/2 stem.
    stem_kernel, stem_stride: the first convolution (7, 2 on ImageNet; 3, 1
      for the CIFAR ResNets, which also drop the pool).
    pool: average-pool the last map to `[N, D]`; False returns the map
      `[N, h, w, D]` itself (attention heads, Grad-CAM).
  """

  stage_sizes: Sequence[int]
  block_cls: ModuleDef
  width: int = 64
  dtype: Any = jnp.float32
  axis_name: str | None = None
  stem_pool: bool = True
  stem_kernel: int = 7
  stem_stride: int = 2
  pool: bool = True
  conv: Callable = nn.Conv
  norm: Callable = nn.BatchNorm

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv, norm = conv_and_norm(self, train)
    x = normalize_images(x, self.dtype)
    k, pad = self.stem_kernel, self.stem_kernel // 2
    x = conv(
      self.width,
      (k, k),
      (self.stem_stride, self.stem_stride),
      padding=((pad, pad), (pad, pad)),
      name="conv1",
    )(x)
    x = nn.relu(norm(name="bn1")(x))
    if self.stem_pool:
      x = stem_max_pool(x)
    for i, n in enumerate(self.stage_sizes):
      for j in range(n):
        x = self.block_cls(
          self.width * 2**i,
          conv=conv,
          norm=norm,
          strides=2 if i > 0 and j == 0 else 1,
          name=f"layer{i + 1}_{j}",
        )(x)
    x = CamPoint(name="cam")(x)
    if not self.pool:
      return x
    return jnp.mean(x, axis=(1, 2)).astype(jnp.float32)


class CifarBlock(nn.Module):
  """Basic block of the CIFAR ResNets (He et al. 2016, §4.2) with the
  parameter-free "option A" shortcut: a strided identity whose new channels
  are zeros, as in the LDAM/GBG code."""

  filters: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1

  @nn.compact
  def __call__(self, x):
    y = self.conv(
      self.filters,
      (3, 3),
      (self.strides, self.strides),
      padding=((1, 1), (1, 1)),
      name="conv1",
    )(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = self.conv(self.filters, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(
      y
    )
    y = self.norm(name="bn2")(y)
    residual = x
    if residual.shape != y.shape:
      residual = residual[:, :: self.strides, :: self.strides, :]
      extra = self.filters - residual.shape[-1]
      residual = jnp.pad(
        residual, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2))
      )
    return nn.relu(residual + y)


# ImageNet statistics, as torchvision's weights expect. numpy, not jnp: a
# module-level jnp array would initialise the accelerator in every process
# that imports this module (e.g. Grain's decode workers).
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32) * 255


def conv_and_norm(module, train: bool):
  """Bias-free conv and BatchNorm (torchvision's momentum/epsilon) partials
  in the module's dtype; BatchNorm syncs over ``module.axis_name``."""
  conv = functools.partial(module.conv, use_bias=False, dtype=module.dtype)
  norm = functools.partial(
    module.norm,
    use_running_average=not train,
    momentum=0.9,
    epsilon=1e-5,
    dtype=module.dtype,
    axis_name=module.axis_name,
  )
  return conv, norm


def stem_max_pool(x):
  """The stem's 3x3/2 max-pool with one pixel of padding, the padding
  written out as -inf: the same numbers as ``padding=((1, 1), (1, 1))``,
  and the form ONNX converters translate exactly (jax2onnx drops an
  explicit pooling padding)."""
  x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
  return nn.max_pool(x, window_shape=(3, 3), strides=(2, 2))


def normalize_images(x, dtype):
  """uint8 (or float in [0, 255]) images -> ImageNet-normalised ``dtype``."""
  x = x.astype(jnp.float32)
  return ((x - IMAGENET_MEAN) / IMAGENET_STD).astype(dtype)


ResNet18 = functools.partial(
  ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock
)
ResNet50 = functools.partial(
  ResNet, stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck
)
# Tests and smoke runs: one block per stage, narrow.
ResNetTiny = functools.partial(
  ResNet, stage_sizes=(1, 1), block_cls=BasicBlock, width=8
)
# CPU "quick" runs: ResNet-18 layout at a quarter of the width.
ResNetSmall = functools.partial(
  ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock, width=16
)
# ResNet-(6n+2) for 32x32 images (He et al. 2016, §4.2): a 3x3 stem, three
# stages of n option-A blocks (width, 2x, 4x), no pool. n = 5 is ResNet-32,
# paper 004's CIFAR backbone; n = 1 at width 8 is for tests.
_CIFAR = dict(
  block_cls=CifarBlock, stem_kernel=3, stem_stride=1, stem_pool=False
)
ResNet32 = functools.partial(ResNet, stage_sizes=(5, 5, 5), width=16, **_CIFAR)
ResNet8Cifar = functools.partial(
  ResNet, stage_sizes=(1, 1, 1), width=8, **_CIFAR
)
