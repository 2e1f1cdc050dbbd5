"""DenseNet-121 (Huang et al. 2017) in flax linen, torchvision's layout."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from agt_jax.models.cam import CamPoint
from agt_jax.models.resnet import (
  conv_and_norm,
  normalize_images,
  stem_max_pool,
)


class DenseLayer(nn.Module):
  growth_rate: int
  bn_size: int
  conv: Any
  norm: Any

  @nn.compact
  def __call__(self, x):
    y = nn.relu(self.norm(name="norm1")(x))
    y = self.conv(self.bn_size * self.growth_rate, (1, 1), name="conv1")(y)
    y = nn.relu(self.norm(name="norm2")(y))
    y = self.conv(
      self.growth_rate, (3, 3), padding=((1, 1), (1, 1)), name="conv2"
    )(y)
    return jnp.concatenate([x, y], axis=-1)


class Transition(nn.Module):
  features: int
  conv: Any
  norm: Any

  @nn.compact
  def __call__(self, x):
    x = nn.relu(self.norm(name="norm")(x))
    x = self.conv(self.features, (1, 1), name="conv")(x)
    return nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))


class DenseNet(nn.Module):
  """Encoder: images -> features `[N, D]` (D = 1024 for DenseNet-121)."""

  block_config: Sequence[int] = (6, 12, 24, 16)
  growth_rate: int = 32
  num_init_features: int = 64
  bn_size: int = 4
  dtype: Any = jnp.float32
  axis_name: str | None = None
  pool: bool = True  # False: the last map [N, h, w, D]
  conv: Any = nn.Conv
  norm: Any = nn.BatchNorm

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv, norm = conv_and_norm(self, train)
    x = normalize_images(x, self.dtype)
    x = conv(
      self.num_init_features,
      (7, 7),
      (2, 2),
      padding=((3, 3), (3, 3)),
      name="conv0",
    )(x)
    x = nn.relu(norm(name="norm0")(x))
    x = stem_max_pool(x)
    features = self.num_init_features
    for i, n in enumerate(self.block_config):
      for j in range(n):
        x = DenseLayer(
          self.growth_rate,
          self.bn_size,
          conv,
          norm,
          name=f"denseblock{i + 1}_layer{j + 1}",
        )(x)
      features += n * self.growth_rate
      if i != len(self.block_config) - 1:
        features //= 2
        x = Transition(features, conv, norm, name=f"transition{i + 1}")(x)
    x = CamPoint(name="cam")(nn.relu(norm(name="norm5")(x)))
    if not self.pool:
      return x
    return jnp.mean(x, axis=(1, 2)).astype(jnp.float32)


DenseNet121 = functools.partial(DenseNet, block_config=(6, 12, 24, 16))
DenseNetTiny = functools.partial(
  DenseNet, block_config=(2, 2), growth_rate=4, num_init_features=8, bn_size=2
)
