"""Vision Transformer (Dosovitskiy et al. 2021) in torchvision's layout, so
torchvision's ``vit_b_16`` weights import one to one
(:func:`agt_jax.models.weights.from_torchvision`).

Images are cut into ``patch x patch`` tokens by a strided convolution, a
class token is prepended, learned position embeddings added, then
pre-LayerNorm blocks (multi-head self-attention, GELU MLP) and a final
LayerNorm. LayerNorm epsilon 1e-6 and exact GELU, as torchvision.

``head="avg"`` is the masked-autoencoder fine-tuning head that RETFound
(Zhou et al. 2023; a ViT-L/16 pretrained on fundus photographs) uses: the
patch tokens' mean through its own LayerNorm (``fc_norm``) in place of the
class token and the final norm. timm-layout state dicts (RETFound's
``{"model": ...}`` checkpoints included) import with
:func:`agt_jax.models.weights.from_timm`, the position embeddings resized
bicubically when the grid differs, as RETFound's fine-tuning does.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from agt_jax.models.cam import CamPoint
from agt_jax.models.layers import drop_path
from agt_jax.models.resnet import normalize_images

__all__ = ["RETFound", "RETFoundTest", "ViT", "ViTB16", "ViTTiny"]

_LN = functools.partial(nn.LayerNorm, epsilon=1e-6)


class SelfAttention(nn.Module):
  """torchvision's ``nn.MultiheadAttention`` (batch first, self-attention):
  one ``in_proj`` to q, k, v, scaled dot-product per head, ``out_proj``."""

  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    n, length, d = x.shape
    dh = d // self.num_heads
    qkv = nn.Dense(3 * d, dtype=self.dtype, name="in_proj")(x)
    q, k, v = (
      a.reshape(n, length, self.num_heads, dh)
      for a in jnp.split(qkv, 3, axis=-1)
    )
    logits = jnp.einsum("nqhd,nkhd->nhqk", q, k) / jnp.sqrt(dh).astype(q.dtype)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(
      v.dtype
    )
    out = jnp.einsum("nhqk,nkhd->nqhd", weights, v).reshape(n, length, d)
    return nn.Dense(d, dtype=self.dtype, name="out_proj")(out)


class EncoderBlock(nn.Module):
  num_heads: int
  mlp_dim: int
  dtype: Any = jnp.float32
  drop_rate: float = 0.0

  @nn.compact
  def __call__(self, x, train: bool = False):
    y = SelfAttention(self.num_heads, self.dtype, name="self_attention")(
      _LN(dtype=self.dtype, name="ln_1")(x)
    )
    x = x + drop_path(self, y, self.drop_rate, train)
    y = _LN(dtype=self.dtype, name="ln_2")(x)
    y = nn.Dense(self.mlp_dim, dtype=self.dtype, name="mlp_0")(y)
    y = nn.gelu(y, approximate=False)
    y = nn.Dense(x.shape[-1], dtype=self.dtype, name="mlp_3")(y)
    return x + drop_path(self, y, self.drop_rate, train)


class ViT(nn.Module):
  """Encoder: images ``[N, H, W, 3]`` (uint8 or [0, 255]) -> the class
  token after the final LayerNorm ``[N, D]``; ``pool=False`` returns the
  patch tokens as a map ``[N, H/p, W/p, D]`` instead (``head="avg"``:
  each through ``fc_norm``).

  The position embeddings are sized by the first input (224 px and 16 px
  patches: 197 tokens); ``axis_name`` is accepted for the encoder
  interface (no batch norm). ``drop_path`` is the last block's
  stochastic-depth rate (torchvision's ViT: none; RETFound's fine-tuning:
  0.2), run in training when the step supplies a ``dropout`` rng.
  """

  patch: int = 16
  hidden: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  head: str = "token"  # or "avg": mean of the patch tokens, fc_norm
  drop_path: float = 0.0
  dtype: Any = jnp.float32
  axis_name: str | None = None
  pool: bool = True

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = normalize_images(x, self.dtype)
    p = self.patch
    x = nn.Conv(
      self.hidden,
      (p, p),
      (p, p),
      padding="VALID",
      dtype=self.dtype,
      name="conv_proj",
    )(x)
    n, gh, gw, d = x.shape
    x = x.reshape(n, gh * gw, d)
    cls = self.param("class_token", nn.initializers.zeros, (1, 1, d))
    x = jnp.concatenate(
      [jnp.broadcast_to(cls, (n, 1, d)).astype(x.dtype), x], axis=1
    )
    pos = self.param(
      "pos_embedding", nn.initializers.normal(0.02), (1, gh * gw + 1, d)
    )
    x = x + pos.astype(x.dtype)
    for i in range(self.depth):
      if i == self.depth - 1:
        # Grad-CAM's map: the patch tokens the last block reads (after it
        # the class token no longer looks at them).
        grid = CamPoint(name="cam")(x[:, 1:].reshape(n, gh, gw, d))
        x = jnp.concatenate([x[:, :1], grid.reshape(n, gh * gw, d)], axis=1)
      x = EncoderBlock(
        self.num_heads,
        self.mlp_dim,
        self.dtype,
        self.drop_path * i / max(self.depth - 1, 1),
        name=f"encoder_layer_{i}",
      )(x, train=train)
    if self.head == "avg":
      norm = _LN(dtype=self.dtype, name="fc_norm")
      if self.pool:
        return norm(jnp.mean(x[:, 1:], axis=1)).astype(jnp.float32)
      return norm(x[:, 1:]).astype(jnp.float32).reshape(n, gh, gw, d)
    x = _LN(dtype=self.dtype, name="ln")(x).astype(jnp.float32)
    if self.pool:
      return x[:, 0]
    return x[:, 1:].reshape(n, gh, gw, d)


ViTB16 = functools.partial(
  ViT, patch=16, hidden=768, depth=12, num_heads=12, mlp_dim=3072
)
# Tests and smoke runs: the same layout, 2 blocks of width 32.
ViTTiny = functools.partial(
  ViT, patch=8, hidden=32, depth=2, num_heads=4, mlp_dim=64
)
# RETFound's ViT-L/16 with its fine-tuning head (global average pool).
RETFound = functools.partial(
  ViT,
  patch=16,
  hidden=1024,
  depth=24,
  num_heads=16,
  mlp_dim=4096,
  head="avg",
  drop_path=0.2,
)
RETFoundTest = functools.partial(
  ViT, patch=8, hidden=32, depth=2, num_heads=4, mlp_dim=128, head="avg"
)
