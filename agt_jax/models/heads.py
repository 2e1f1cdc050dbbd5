"""Teacher (shared encoder + one head per class group), its multi-expert and
"others" variants, the multi-teacher baseline, and the Student."""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from flax import linen as nn


def head_name(group_index: int) -> str:
  return f"head_g{group_index}"


def encoder_name(group_index: int) -> str:
  return f"encoder_g{group_index}"


class NormedDense(nn.Module):
  """Cosine classifier ``s * <x/|x|, w_k/|w_k|>`` (RIDE's normalised experts)."""

  features: int
  scale: float = 30.0

  @nn.compact
  def __call__(self, x):
    x = x.astype(jnp.float32)
    w = (
      self.param(
        "kernel", nn.initializers.uniform(1.0), (x.shape[-1], self.features)
      )
      * 2.0
      - 1.0
    )
    x = x / (jnp.linalg.norm(x, axis=-1, keepdims=True) + 1e-12)
    w = w / (jnp.linalg.norm(w, axis=0, keepdims=True) + 1e-12)
    return self.scale * x @ w


class GroupHead(nn.Module):
  """One group's sub-classifier: ``experts`` linear (or cosine) experts over
  its classes, plus an optional "others" output per expert.

  Returns ``[E, N, K (+1)]``; the "others" output, when present, is last.
  """

  num_classes: int
  experts: int = 1
  expert_scale: float | None = None
  others: bool = False

  @nn.compact
  def __call__(self, features):
    k = self.num_classes + int(self.others)
    outs = []
    for e in range(self.experts):
      if self.expert_scale is None:
        layer = nn.Dense(k, name=f"expert{e}")
      else:
        layer = NormedDense(k, scale=self.expert_scale, name=f"expert{e}")
      outs.append(layer(features).astype(jnp.float32))
    return jnp.stack(outs)


class Teacher(nn.Module):
  """AGT teacher: a shared encoder and a dict of sub-classifiers.

  Head ``g`` (param key ``head_g{g}``) predicts the classes of group ``g``;
  the logits are scattered back into global class order, so
  ``logits[:, c]`` is class ``c`` whatever its group. With the defaults each
  head is one ``nn.Dense``. ``experts > 1`` gives every head RIDE-style
  experts (cosine classifiers scaled by ``expert_scale``) whose logits are
  averaged; ``others=True`` adds one "others" output per head (BAGS). Their
  per-expert logits `[E, N, C]` and "others" logits `[N, G]` are sown into
  the ``aux`` collection (``expert_logits``, ``others_logits``) for losses
  that need them.

  Returns:
    ``(logits [N, C], features [N, D])``.
  """

  encoder: nn.Module
  groups: Sequence[Sequence[int]]
  num_classes: int
  experts: int = 1
  expert_scale: float | None = None
  others: bool = False

  def _simple(self) -> bool:
    return self.experts == 1 and self.expert_scale is None and not self.others

  def setup(self):
    if self._simple():
      self.heads = {
        head_name(g): nn.Dense(len(classes), name=head_name(g))
        for g, classes in enumerate(self.groups)
      }
    else:
      self.heads = {
        head_name(g): GroupHead(
          len(classes),
          experts=self.experts,
          expert_scale=self.expert_scale,
          others=self.others,
          name=head_name(g),
        )
        for g, classes in enumerate(self.groups)
      }

  def __call__(self, x, train: bool = False):
    features = self.encoder(x, train=train)
    return self.logits_from_features(features), features

  def logits_from_features(self, features):
    order = np.concatenate([np.asarray(c, np.int32) for c in self.groups])
    inverse = np.argsort(order)  # static: position of class c in the concat
    parts = [
      self.heads[head_name(g)](features) for g in range(len(self.groups))
    ]
    if self._simple():
      return jnp.concatenate(parts, axis=-1)[:, inverse].astype(jnp.float32)
    if self.others:
      self.sow(
        "aux",
        "others_logits",
        jnp.concatenate([p[..., -1:].mean(0) for p in parts], -1),
      )
      parts = [p[..., :-1] for p in parts]
    experts = jnp.concatenate(parts, axis=-1)[..., inverse]  # [E, N, C]
    self.sow("aux", "expert_logits", experts)
    return experts.mean(0)


class MultiTeacher(nn.Module):
  """One teacher per class subset (the multi-teacher KD baseline): subset
  ``g`` has its own encoder ``encoder_g{g}`` and head ``head_g{g}``; logits
  are scattered into global class order and the features concatenated.

  Returns:
    ``(logits [N, C], features [N, G * D])``.
  """

  encoder: nn.Module
  groups: Sequence[Sequence[int]]
  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    order = np.concatenate([np.asarray(c, np.int32) for c in self.groups])
    inverse = np.argsort(order)
    feats, parts = [], []
    for g, classes in enumerate(self.groups):
      f = self.encoder.clone(parent=self, name=encoder_name(g))(x, train=train)
      feats.append(f)
      parts.append(nn.Dense(len(classes), name=head_name(g))(f))
    logits = jnp.concatenate(parts, axis=-1)[:, inverse]
    return logits.astype(jnp.float32), jnp.concatenate(feats, axis=-1)


class Student(nn.Module):
  """One encoder, one head: ``(logits [N, C], features [N, D])``.

  ``freeze_encoder``: the encoder always runs in eval mode (batch norm uses
  and keeps its running statistics); pair it with
  :func:`agt_jax.train.steps.frozen_encoder_tx` so its weights stay fixed.
  """

  encoder: nn.Module
  num_classes: int
  freeze_encoder: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    features = self.encoder(x, train=train and not self.freeze_encoder)
    return nn.Dense(self.num_classes, name="head")(features).astype(
      jnp.float32
    ), features
