"""Transfer-learning heads on an encoder's last feature map (paper 001).

:class:`TransferNet` runs an encoder built with ``pool=False`` (its last
spatial map ``[N, h, w, k]``), an optional attention block after the last
stage (:class:`SqueezeExcite` or :class:`SpatialSelfAttention`), global
average pooling and a classifier (linear, or paper 001's MLP head with
dropout). Its two halves are separate methods, so Grad-CAM
(:func:`grad_cam`) differentiates the logits with respect to the map, and
the Grad-CAM entropy regulariser (:func:`cam_entropy`) can be trained.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from agt_jax.models.cam import class_cams

__all__ = [
  "MLPHead",
  "SpatialSelfAttention",
  "SqueezeExcite",
  "TransferNet",
  "cam_entropy",
  "class_cams",
  "grad_cam",
]

ATTENTIONS = ("none", "se", "mha")
HEADS = ("linear", "mlp")


class SqueezeExcite(nn.Module):
  """Squeeze-and-excitation (Hu et al. 2018): channel gates
  ``σ(W2 relu(W1 mean_hw(x)))`` multiply the map; ``[N, h, w, k]`` in and
  out, ``k / reduction`` hidden units (paper 001: reduction 16)."""

  reduction: int = 16

  @nn.compact
  def __call__(self, x):
    k = x.shape[-1]
    s = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    s = nn.relu(nn.Dense(max(k // self.reduction, 1), name="fc1")(s))
    s = jax.nn.sigmoid(nn.Dense(k, name="fc2")(s))
    return x * s[:, None, None, :].astype(x.dtype)


class SpatialSelfAttention(nn.Module):
  """Multi-head self-attention over the map's positions (paper 001, Task 3):
  tokens are the ``h * w`` positions, pre-LayerNorm, residual:
  ``t + MHA(LN(t), LN(t))``. ``[N, h, w, k]`` in and out; ``k`` must be a
  multiple of ``num_heads`` (paper 001: 8 heads)."""

  num_heads: int = 8

  @nn.compact
  def __call__(self, x):
    n, h, w, k = x.shape
    if k % self.num_heads:
      raise ValueError(
        f"attention='mha': {k} channels do not split into "
        f"{self.num_heads} heads."
      )
    t = x.astype(jnp.float32).reshape(n, h * w, k)
    y = nn.LayerNorm(name="norm")(t)
    y = nn.MultiHeadDotProductAttention(
      num_heads=self.num_heads, name="attention"
    )(y, y)
    return (t + y).reshape(n, h, w, k)


class MLPHead(nn.Module):
  """``d -> hidden, ReLU, dropout, -> C`` (paper 001's classifier: 512
  hidden units, dropout 0.5); ``hidden=0`` is one linear layer."""

  num_classes: int
  hidden: int = 512
  dropout: float = 0.5

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.hidden:
      x = nn.relu(nn.Dense(self.hidden, name="fc1")(x))
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, name="out")(x).astype(jnp.float32)


class TransferNet(nn.Module):
  """Encoder map -> attention -> mean pool -> head:
  ``(logits [N, C], pooled features [N, k])``.

  Attributes:
    encoder: built with ``pool=False`` (``[N, h, w, k]``); an encoder that
      returns ``[N, d]`` (ViT's class token) works with ``attention="none"``.
    num_classes: outputs.
    attention: ``none`` | ``se`` | ``mha``.
    head: ``mlp`` (hidden 512, dropout 0.5) | ``linear``.
    freeze_encoder: the encoder always runs in eval mode (batch norm keeps
      its running statistics); pair it with
      :func:`agt_jax.train.steps.frozen_encoder_tx`.
  """

  encoder: nn.Module
  num_classes: int
  attention: str = "none"
  head: str = "mlp"
  hidden: int = 512
  dropout: float = 0.5
  reduction: int = 16
  num_heads: int = 8
  freeze_encoder: bool = False

  def setup(self):
    if self.attention not in ATTENTIONS:
      raise ValueError(
        f"attention must be one of {ATTENTIONS}, got " f"{self.attention!r}."
      )
    if self.head not in HEADS:
      raise ValueError(f"head must be one of {HEADS}, got {self.head!r}.")
    self.attend = {
      "none": None,
      "se": SqueezeExcite(self.reduction, name="se"),
      "mha": SpatialSelfAttention(self.num_heads, name="mha"),
    }[self.attention]
    self.classifier = MLPHead(
      self.num_classes,
      hidden=self.hidden if self.head == "mlp" else 0,
      dropout=self.dropout,
      name="head",
    )

  def __call__(self, x, train: bool = False):
    return self.from_map(self.feature_map(x, train=train), train=train)

  def feature_map(self, x, train: bool = False):
    """The encoder's last map ``[N, h, w, k]`` (Grad-CAM's layer)."""
    return self.encoder(x, train=train and not self.freeze_encoder)

  def from_map(self, fmap, train: bool = False):
    """``(logits, pooled)`` from the map; each image's logits depend on its
    own map only (what makes :func:`grad_cam` per image)."""
    if fmap.ndim == 2:
      if self.attend is not None:
        raise ValueError(
          f"attention={self.attention!r} needs a spatial map; "
          "this encoder returns pooled features."
        )
      pooled = fmap.astype(jnp.float32)
    else:
      if self.attend is not None:
        fmap = self.attend(fmap)
      pooled = jnp.mean(fmap.astype(jnp.float32), axis=(1, 2))
    return self.classifier(pooled, train=train), pooled


def grad_cam(model: TransferNet, variables, images):
  """Grad-CAM (Selvaraju et al. 2017) at the encoder's last map, eval mode.

  Args:
    model: a :class:`TransferNet` with a spatial encoder.
    variables: its ``{"params", "batch_stats"}``.
    images: ``[N, H, W, 3]``.

  Returns:
    ``(probs [N, C], cams [N, C, h, w])``, each map scaled to a maximum of 1
    (all-zero maps stay zero).
  """
  fmap = model.apply(variables, images, method=TransferNet.feature_map)
  if fmap.ndim != 4:
    raise ValueError("grad_cam needs an encoder with a spatial map.")
  head = lambda m: model.apply(variables, m, method=TransferNet.from_map)[0]
  logits, cam = class_cams(fmap, head, model.num_classes)
  cam = cam / jnp.maximum(cam.max(axis=(2, 3), keepdims=True), 1e-12)
  return jax.nn.sigmoid(logits), cam


def cam_entropy(cam, *, where=None, eps: float = 1e-12):
  r"""Normalised entropy of each Grad-CAM map (the Grad-CAM-guided training
  term of paper 001, Task 4c).

  .. math::
    p_{hw} = \frac{\mathrm{cam}_{hw}}{\sum \mathrm{cam} + \epsilon},\quad
    H = -\frac{\sum_{hw} p_{hw} \log(p_{hw} + \epsilon)}{\log(hw)}

  ``H`` is 1 for a uniform map and 0 for a single peak.

  Args:
    cam: ``[..., h, w]`` non-negative maps.
    where: optional mask of the leading axes (e.g. ``[N, C]`` positives);
      masked maps give 0.

  Returns:
    ``[...]`` entropies in [0, 1].
  """
  h, w = cam.shape[-2:]
  flat = cam.reshape(*cam.shape[:-2], h * w)
  p = flat / (flat.sum(-1, keepdims=True) + eps)
  ent = -jnp.sum(p * jnp.log(p + eps), axis=-1) / jnp.log(float(h * w))
  if where is not None:
    ent = jnp.where(where, ent, 0.0)
  return ent
