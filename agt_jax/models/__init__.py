"""Encoders (ResNet-18/50, DenseNet-121, tiny test variants) and the AGT
Teacher/Student wrappers, selectable by name."""

from __future__ import annotations

import jax.numpy as jnp

from agt_jax.models.densenet import DenseNet121, DenseNetTiny
from agt_jax.models.heads import (GroupHead, MultiTeacher, NormedDense,
                                   Student, Teacher, encoder_name, head_name)
from agt_jax.models.resnet import (ResNet8Cifar, ResNet18, ResNet32, ResNet50,
                                   ResNetSmall, ResNetTiny)

ENCODERS = {
    "resnet18": ResNet18, "resnet50": ResNet50, "densenet121": DenseNet121,
    "resnet_small": ResNetSmall, "resnet_tiny": ResNetTiny, "densenet_tiny": DenseNetTiny,
    "resnet32": ResNet32, "resnet8_cifar": ResNet8Cifar,
}


def make_encoder(name: str, *, dtype=jnp.float32, axis_name=None):
  if name not in ENCODERS:
    raise ValueError(f"unknown model {name!r}; known: {sorted(ENCODERS)}.")
  return ENCODERS[name](dtype=dtype, axis_name=axis_name)


__all__ = ["ENCODERS", "GroupHead", "MultiTeacher", "NormedDense", "Student",
           "Teacher", "encoder_name", "head_name", "make_encoder"]
