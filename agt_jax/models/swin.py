"""Swin Transformer (Liu et al. 2021) and Swin V2 (Liu et al. 2022) in flax
linen, torchvision's layout, so torchvision's ``swin_t`` and ``swin_v2_t`` /
``swin_v2_b`` weights import by name
(:func:`agt_jax.models.weights.from_torchvision`).

A 4x4/4 patch embedding with LayerNorm; stages of blocks with windowed
multi-head self-attention (a learned relative position bias per head; every
second block's windows shifted by half a window, with the cross-region
mask), each followed by a 4x MLP, both pre-norm with residuals and
stochastic depth; patch merging (2x2 neighbours concatenated, LayerNorm, a
linear map to twice the width) between stages; a final LayerNorm on every
token before pooling. As torchvision, a map is padded to a multiple of the
window, and a window as large as the padded map is not shifted. Stochastic
depth runs in training when the step supplies a ``dropout`` rng (as
EfficientNet's); attention and MLP dropout are 0, torchvision's defaults.

Swin V2 (``v2=True``, torchvision's): scaled cosine attention (a learned
per-head logit scale, clamped at log 100), a continuous relative position
bias (a 2 -> 512 -> heads MLP over log-spaced coordinates, 16 sigmoid),
the key's bias held at zero, post-norm residuals
(``x + norm(attn(x))``) and patch merging that normalises after the
reduction. Left out: V2's SimMIM pretraining and the window-size transfer
of the bias table (the MLP is evaluated at the model's own window).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from agt_jax.models.cam import CamPoint
from agt_jax.models.layers import drop_path, patchify_stem
from agt_jax.models.resnet import normalize_images


def relative_index(window: int) -> np.ndarray:
  """`[N * N]` index into the `[(2w - 1)^2, heads]` bias table of each
  (query, key) pair of a ``window`` x ``window`` window (torchvision's)."""
  coords = np.stack(
    np.meshgrid(np.arange(window), np.arange(window), indexing="ij")
  )
  flat = coords.reshape(2, -1)
  rel = (flat[:, :, None] - flat[:, None, :]).transpose(1, 2, 0) + (window - 1)
  return (rel[..., 0] * (2 * window - 1) + rel[..., 1]).reshape(-1)


def shift_mask(hp: int, wp: int, window: int, shift: tuple) -> np.ndarray:
  """`[windows, N, N]`: 0 within a region, -100 across the regions a cyclic
  shift brings into one window (torchvision's values)."""
  img = np.zeros((hp, wp))
  count = 0
  for h in ((0, -window), (-window, -shift[0]), (-shift[0], None)):
    for w in ((0, -window), (-window, -shift[1]), (-shift[1], None)):
      img[h[0] : h[1], w[0] : w[1]] = count
      count += 1
  win = img.reshape(hp // window, window, wp // window, window)
  win = win.transpose(0, 2, 1, 3).reshape(-1, window * window)
  diff = win[:, None, :] - win[:, :, None]
  return np.where(diff != 0, -100.0, 0.0).astype(np.float32)


def log_coords(window: int) -> np.ndarray:
  """`[(2w - 1)^2, 2]` Swin V2's log-spaced relative coordinates, the
  position-bias MLP's input (torchvision's ``relative_coords_table``, in
  float32 as there)."""
  r = np.arange(-(window - 1), window, dtype=np.float32)
  t = np.stack(np.meshgrid(r, r, indexing="ij"), axis=-1)
  t = t / np.float32(window - 1) * np.float32(8)
  t = np.sign(t) * np.log2(np.abs(t) + np.float32(1)) / np.float32(3)
  return t.reshape(-1, 2).astype(np.float32)


class QKV(nn.Module):
  """The joint q, k, v projection (torch's ``Linear(c, 3c)``); Swin V2
  holds the key's third of the bias at zero in the forward pass, as
  torchvision (so it also receives no gradient)."""

  features: int
  zero_key_bias: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param(
      "kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features)
    )
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    if self.zero_key_bias:
      third = self.features // 3
      keep = np.ones(self.features, np.float32)
      keep[third : 2 * third] = 0.0
      bias = bias * keep
    return x.astype(self.dtype) @ kernel.astype(self.dtype) + bias.astype(
      self.dtype
    )


class WindowAttention(nn.Module):
  dim: int
  heads: int
  window: int
  shift: int
  dtype: Any = jnp.float32
  v2: bool = False

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    ws = self.window
    pad_b, pad_r = (ws - h % ws) % ws, (ws - w % ws) % ws
    x = jnp.pad(x, ((0, 0), (0, pad_b), (0, pad_r), (0, 0)))
    hp, wp = h + pad_b, w + pad_r
    shift = (0 if ws >= hp else self.shift, 0 if ws >= wp else self.shift)
    if sum(shift):
      x = jnp.roll(x, (-shift[0], -shift[1]), axis=(1, 2))
    nh, nw, n = hp // ws, wp // ws, ws * ws
    x = x.reshape(b, nh, ws, nw, ws, c).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(b * nh * nw, n, c)
    qkv = QKV(3 * c, self.v2, self.dtype, name="qkv")(x)
    qkv = qkv.reshape(-1, n, 3, self.heads, c // self.heads)
    q, k, v = qkv.transpose(2, 0, 3, 1, 4)  # each [B nW, heads, N, d]
    if self.v2:  # scaled cosine attention
      # torch's F.normalize, a / max(|a|, 1e-12), written so that a zero
      # vector (a padded token's key) has a zero gradient, not NaN.
      unit = lambda a: a * jax.lax.rsqrt(
        jnp.maximum(jnp.sum(jnp.square(a), axis=-1, keepdims=True), 1e-24)
      )
      logit_scale = self.param(
        "logit_scale",
        nn.initializers.constant(np.log(10.0)),
        (self.heads, 1, 1),
      )
      scale = jnp.exp(jnp.minimum(logit_scale, np.log(100.0)))
      attn = (unit(q) @ unit(k).swapaxes(-2, -1)) * scale.astype(q.dtype)
      table = nn.Dense(512, name="cpb_mlp_0")(jnp.asarray(log_coords(ws)))
      table = nn.Dense(self.heads, use_bias=False, name="cpb_mlp_2")(
        nn.relu(table)
      )
      bias = 16 * nn.sigmoid(table[relative_index(ws)])
      bias = bias.reshape(n, n, self.heads)
    else:
      attn = (q * (c // self.heads) ** -0.5) @ k.swapaxes(-2, -1)
      table = self.param(
        "relative_position_bias_table",
        nn.initializers.truncated_normal(0.02),
        ((2 * ws - 1) ** 2, self.heads),
      )
      bias = table[relative_index(ws)].reshape(n, n, self.heads)
    attn = attn + bias.transpose(2, 0, 1)[None].astype(attn.dtype)
    if sum(shift):
      mask = jnp.asarray(shift_mask(hp, wp, ws, shift), attn.dtype)
      attn = attn.reshape(b, nh * nw, self.heads, n, n) + mask[None, :, None]
      attn = attn.reshape(-1, self.heads, n, n)
    attn = nn.softmax(attn.astype(jnp.float32), axis=-1).astype(v.dtype)
    x = (attn @ v).transpose(0, 2, 1, 3).reshape(-1, n, c)
    x = nn.Dense(c, dtype=self.dtype, name="proj")(x)
    x = x.reshape(b, nh, nw, ws, ws, c).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(b, hp, wp, c)
    if sum(shift):
      x = jnp.roll(x, shift, axis=(1, 2))
    return x[:, :h, :w]


class Block(nn.Module):
  dim: int
  heads: int
  window: int
  shift: int
  drop_rate: float
  dtype: Any = jnp.float32
  v2: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    ln = functools.partial(nn.LayerNorm, epsilon=1e-5, dtype=self.dtype)
    attn = WindowAttention(
      self.dim,
      self.heads,
      self.window,
      self.shift,
      self.dtype,
      self.v2,
      name="attn",
    )

    def mlp(y):
      y = nn.Dense(4 * self.dim, dtype=self.dtype, name="mlp_0")(y)
      return nn.Dense(self.dim, dtype=self.dtype, name="mlp_3")(
        nn.gelu(y, approximate=False)
      )

    if self.v2:  # post-norm residuals
      x = x + drop_path(self, ln(name="norm1")(attn(x)), self.drop_rate, train)
      y = ln(name="norm2")(mlp(x))
      return x + drop_path(self, y, self.drop_rate, train)
    x = x + drop_path(self, attn(ln(name="norm1")(x)), self.drop_rate, train)
    return x + drop_path(self, mlp(ln(name="norm2")(x)), self.drop_rate, train)


class PatchMerging(nn.Module):
  dim: int
  dtype: Any = jnp.float32
  v2: bool = False

  @nn.compact
  def __call__(self, x):
    h, w = x.shape[1:3]
    x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    x = jnp.concatenate(
      [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]],
      axis=-1,
    )
    norm = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="norm")
    reduce = nn.Dense(
      2 * self.dim, use_bias=False, dtype=self.dtype, name="reduction"
    )
    return norm(reduce(x)) if self.v2 else reduce(norm(x))


class Swin(nn.Module):
  """Encoder: images ``[N, H, W, 3]`` (uint8 or [0, 255]) -> pooled
  features after the final LayerNorm ``[N, D]``; ``pool=False`` returns the
  normalised last map."""

  embed: int = 96
  depths: Sequence[int] = (2, 2, 6, 2)
  heads: Sequence[int] = (3, 6, 12, 24)
  window: int = 7
  drop_path: float = 0.2
  v2: bool = False
  dtype: Any = jnp.float32
  axis_name: str | None = None  # no batch norm: accepted for the interface
  pool: bool = True

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = normalize_images(x, self.dtype)
    x = patchify_stem(x, self.embed, 4, eps=1e-5, dtype=self.dtype)
    total, index = sum(self.depths), 0
    for i, (depth, heads) in enumerate(zip(self.depths, self.heads)):
      dim = self.embed * 2**i
      if i > 0:
        x = PatchMerging(dim // 2, self.dtype, self.v2, name=f"merge{i}")(x)
      for j in range(depth):
        x = Block(
          dim,
          heads,
          self.window,
          0 if j % 2 == 0 else self.window // 2,
          self.drop_path * index / max(total - 1, 1),
          self.dtype,
          self.v2,
          name=f"stage{i + 1}_{j}",
        )(x, train=train)
        index += 1
    x = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="norm")(x)
    x = CamPoint(name="cam")(x)
    if not self.pool:
      return x
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


SwinT = functools.partial(
  Swin, embed=96, depths=(2, 2, 6, 2), heads=(3, 6, 12, 24)
)
# Tests: shifted windows in both stages at 64 px, a merge between them.
SwinTest = functools.partial(
  Swin, embed=16, depths=(2, 2), heads=(2, 4), window=4
)
SwinV2T = functools.partial(
  Swin, embed=96, depths=(2, 2, 6, 2), heads=(3, 6, 12, 24), window=8, v2=True
)
SwinV2B = functools.partial(
  Swin,
  embed=128,
  depths=(2, 2, 18, 2),
  heads=(4, 8, 16, 32),
  window=8,
  drop_path=0.5,
  v2=True,
)
SwinV2Test = functools.partial(
  Swin, embed=16, depths=(2, 2), heads=(2, 4), window=4, v2=True
)


def torchvision_path(key: str) -> tuple | None:
  """``(our module path, torch leaf)`` of a torchvision Swin state-dict
  entry; None for the classifier head and the index buffers."""
  if key.startswith("head.") or key.endswith(
    ("relative_position_index", "relative_coords_table")
  ):
    return None
  m = re.fullmatch(r"features\.0\.([02])\.(weight|bias)", key)
  if m:
    return ("stem_conv" if m.group(1) == "0" else "stem_norm",), m.group(2)
  m = re.fullmatch(r"norm\.(weight|bias)", key)
  if m:
    return ("norm",), m.group(1)
  m = re.fullmatch(r"features\.(\d+)\.(\w+)\.(weight|bias)", key)
  if m and int(m.group(1)) % 2 == 0:  # patch merging
    return (f"merge{int(m.group(1)) // 2}", m.group(2)), m.group(3)
  m = re.fullmatch(r"features\.(\d+)\.(\d+)\.(.+)\.(\w+)", key)
  if m and int(m.group(1)) % 2 == 1:
    stage = f"stage{(int(m.group(1)) + 1) // 2}_{m.group(2)}"
    sub = m.group(3).replace(".", "_")  # attn.qkv -> attn_qkv, mlp.0 -> mlp_0
    sub = {
      "attn_qkv": ("attn", "qkv"),
      "attn_proj": ("attn", "proj"),
      "attn_cpb_mlp_0": ("attn", "cpb_mlp_0"),
      "attn_cpb_mlp_2": ("attn", "cpb_mlp_2"),
      "attn": ("attn",),  # the logit scale and the bias table
    }.get(sub, (sub,))
    return (stage, *sub), m.group(4)
  raise KeyError(f"unexpected Swin entry {key!r}")


__all__ = [
  "Swin",
  "SwinT",
  "SwinTest",
  "SwinV2B",
  "SwinV2T",
  "SwinV2Test",
  "log_coords",
  "relative_index",
  "shift_mask",
]
