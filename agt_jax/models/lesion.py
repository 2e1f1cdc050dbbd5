"""The multi-task pretraining network (paper §3.8, after RLKD): one encoder,
a light lesion segmentation decoder on its last feature map, and a DR grade
head on its pooled features."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class LesionGradeNet(nn.Module):
  """``(seg_logits [N, H, W, L], grade_logits [N, G])`` for uint8 images.

  ``encoder`` must return its last map (``make_encoder(..., pool=False)``);
  its parameters sit under ``encoder`` as in every model of the library, so
  a checkpoint of this network is an ``--init`` for any of them. The
  decoder is a 3x3 convolution (32 channels, ReLU) and a 1x1 convolution to
  the ``L`` lesions on the map, upsampled bilinearly to the input size.
  """

  encoder: nn.Module
  num_lesions: int = 6
  num_grades: int = 5
  width: int = 32

  @nn.compact
  def __call__(self, x, train: bool = False):
    fmap = self.encoder(x, train=train)
    h = nn.relu(nn.Conv(self.width, (3, 3), name="decoder_conv")(fmap))
    seg = nn.Conv(self.num_lesions, (1, 1), name="decoder_out")(h)
    seg = jax.image.resize(
      seg.astype(jnp.float32),
      (x.shape[0], x.shape[1], x.shape[2], self.num_lesions),
      "bilinear",
    )
    pooled = jnp.mean(fmap.astype(jnp.float32), axis=(1, 2))
    grade = nn.Dense(self.num_grades, name="grade_head")(pooled)
    return seg, grade.astype(jnp.float32)
