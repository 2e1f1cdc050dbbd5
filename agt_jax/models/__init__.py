"""Encoders (ResNet-18/50, DenseNet-121, EfficientNet-B0/V2-M, ConvNeXt-T/B,
ConvNeXt V2-B, Swin-T, Swin V2-T/B, ViT-B/16, RETFound's ViT-L/16, tiny test
variants) and the AGT Teacher/Student wrappers, selectable by name."""

from __future__ import annotations

import jax.numpy as jnp

from agt_jax.models.convnext import (
  ConvNeXtBase,
  ConvNeXtTest,
  ConvNeXtTiny,
  ConvNeXtV2Base,
  ConvNeXtV2Test,
)
from agt_jax.models.densenet import DenseNet121, DenseNetTiny
from agt_jax.models.efficientnet import (
  EfficientNetB0,
  EfficientNetTiny,
  EfficientNetV2M,
)
from agt_jax.models.heads import (
  GroupHead,
  MultiTeacher,
  NormedDense,
  Student,
  Teacher,
  encoder_name,
  head_name,
)
from agt_jax.models.lesion import LesionGradeNet
from agt_jax.models.resnet import (
  ResNet8Cifar,
  ResNet18,
  ResNet32,
  ResNet50,
  ResNetSmall,
  ResNetTiny,
)
from agt_jax.models.swin import SwinT, SwinTest, SwinV2B, SwinV2T, SwinV2Test
from agt_jax.models.transfer import TransferNet
from agt_jax.models.vit import RETFound, RETFoundTest, ViTB16, ViTTiny

ENCODERS = {
  "resnet18": ResNet18,
  "resnet50": ResNet50,
  "densenet121": DenseNet121,
  "convnext_tiny": ConvNeXtTiny,
  "convnext_base": ConvNeXtBase,
  "convnextv2_base": ConvNeXtV2Base,
  "swin_t": SwinT,
  "swin_v2_t": SwinV2T,
  "swin_v2_b": SwinV2B,
  "efficientnet_b0": EfficientNetB0,
  "efficientnet_v2_m": EfficientNetV2M,
  "resnet_small": ResNetSmall,
  "resnet_tiny": ResNetTiny,
  "densenet_tiny": DenseNetTiny,
  "efficientnet_tiny": EfficientNetTiny,
  "convnext_test": ConvNeXtTest,
  "convnextv2_test": ConvNeXtV2Test,
  "swin_test": SwinTest,
  "swin_v2_test": SwinV2Test,
  "resnet32": ResNet32,
  "resnet8_cifar": ResNet8Cifar,
  "vit_b16": ViTB16,
  "vit_tiny": ViTTiny,
  "retfound": RETFound,
  "retfound_test": RETFoundTest,
}


# Compute dtypes by config name (parameters stay float32).
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def make_encoder(
  name: str, *, dtype=jnp.float32, axis_name=None, pool: bool = True
):
  """Encoder by name; ``pool=False`` returns its last feature map
  ``[N, h, w, D]`` instead of ``[N, D]`` (ViT: the patch tokens as a map
  instead of the class token)."""
  if name not in ENCODERS:
    raise ValueError(f"unknown model {name!r}; known: {sorted(ENCODERS)}.")
  return ENCODERS[name](dtype=dtype, axis_name=axis_name, pool=pool)


__all__ = [
  "DTYPES",
  "LesionGradeNet",
  "ENCODERS",
  "GroupHead",
  "MultiTeacher",
  "NormedDense",
  "Student",
  "Teacher",
  "TransferNet",
  "encoder_name",
  "head_name",
  "make_encoder",
]
