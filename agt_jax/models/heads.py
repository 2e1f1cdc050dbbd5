"""Teacher (shared encoder + one head per class group) and Student."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import linen as nn


def head_name(group_index: int) -> str:
  return f"head_g{group_index}"


class Teacher(nn.Module):
  """AGT teacher: a shared encoder and a dict of sub-classifiers.

  Head ``g`` (param key ``head_g{g}``) predicts the classes of group ``g``;
  the logits are scattered back into global class order, so
  ``logits[:, c]`` is class ``c`` whatever its group.

  Returns:
    ``(logits [N, C], features [N, D])``.
  """
  encoder: nn.Module
  groups: Sequence[Sequence[int]]
  num_classes: int

  def setup(self):
    self.heads = {head_name(g): nn.Dense(len(classes), name=head_name(g))
                  for g, classes in enumerate(self.groups)}

  def __call__(self, x, train: bool = False):
    features = self.encoder(x, train=train)
    order = np.concatenate([np.asarray(c, np.int32) for c in self.groups])
    inverse = np.argsort(order)   # static: position of class c in the concat
    parts = [self.heads[head_name(g)](features)
             for g in range(len(self.groups))]
    logits = jnp.concatenate(parts, axis=-1)[:, inverse]
    return logits.astype(jnp.float32), features


class Student(nn.Module):
  """One encoder, one head: ``(logits [N, C], features [N, D])``."""
  encoder: nn.Module
  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    features = self.encoder(x, train=train)
    return nn.Dense(self.num_classes, name="head")(features).astype(
        jnp.float32), features
