"""Grad-CAM for every model of the library (Selvaraju et al. 2017).

Each encoder marks the map Grad-CAM reads with a parameter-free
:class:`CamPoint`: ResNet and DenseNet their last map before pooling; ViT its
patch tokens entering the last block, laid out as the patch grid (after the
last block the class token no longer reads them, so their gradient would be
zero). :func:`grad_cam` intercepts that point in an ordinary eval-mode
``model.apply``, so it works for an encoder alone, the AGT teacher (each
class through its own group's head), the student, the transfer networks and
any wrapper that calls an encoder once, with no change to their parameters.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn


class CamPoint(nn.Module):
  """The identity, marking the ``[N, h, w, D]`` map Grad-CAM reads."""

  @nn.compact
  def __call__(self, x):
    return x


def class_cams(fmap, head_fn, num_classes):
  """Grad-CAM of every class: ``relu(Σ_k mean_hw(∂y_c/∂A_k) A_k)``.

  Args:
    fmap: the map ``A`` ``[N, h, w, k]``.
    head_fn: ``fmap -> logits [N, C]``, where image ``n``'s logits read only
      its own map (true of every eval-mode model here: batch norm uses its
      running statistics).
    num_classes: ``C``.

  Returns:
    ``(logits [N, C], cams [N, C, h, w])``, unnormalised.
  """
  del num_classes  # read from the logits
  logits, vjp = jax.vjp(head_fn, fmap)
  return logits, _weigh(vjp, logits, fmap)


def _weigh(vjp, logits, fmap):
  """``relu(Σ_k mean_hw(∂y_c/∂A_k) A_k)`` `[N, C, h, w]` from the
  pullback of ``A -> logits``."""
  eye = jnp.eye(logits.shape[-1], dtype=logits.dtype)
  # One pullback per class; summing class c over the batch still gives each
  # image its own gradient (an image's logits read only its own map).
  grads = jax.vmap(lambda e: vjp(jnp.broadcast_to(e, logits.shape))[0])(eye)
  alpha = jnp.mean(grads.astype(jnp.float32), axis=(2, 3))  # [C, N, k]
  cam = jnp.einsum("cnk,nhwk->nchw", alpha, fmap.astype(jnp.float32))
  return nn.relu(cam)


def _forward(model, variables, images, delta):
  """Eval-mode logits with ``delta`` added at the model's one CamPoint;
  ``(logits, map)``."""
  seen = []

  def add(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if not isinstance(context.module, CamPoint):
      return out
    seen.append(out)
    return out if delta is None else out + delta.astype(out.dtype)

  with nn.intercept_methods(add):
    out = model.apply(variables, images, train=False)
  if len(seen) != 1:
    raise ValueError(
      f"Grad-CAM reads one encoder map; {type(model).__name__} passed "
      f"{len(seen)} (an encoder without a CamPoint, or several encoders)."
    )
  if not isinstance(out, tuple) or out[0].ndim != 2:
    raise ValueError(
      "Grad-CAM needs a model returning (class logits [N, C], features); "
      f"{type(model).__name__} does not (an encoder alone gives features, "
      "not classes)."
    )
  logits = out[0]
  return logits.astype(jnp.float32), seen[0]


def grad_cam(model, variables, images, *, offset=None):
  """Grad-CAM of every class at the model's encoder map, eval mode.

  Args:
    model: any model of the library returning ``(logits, features)`` and
      calling one encoder.
    variables: its ``{"params", "batch_stats"}``.
    images: ``[N, H, W, 3]`` (uint8 or float in [0, 255]).
    offset: optional `[C]` logit offset subtracted before the sigmoid (the
      post-hoc prior correction); the maps, which are scale-free, ignore it.

  Returns:
    ``(probs [N, C], cams [N, C, h, w])``, each map scaled to a maximum of 1
    (all-zero maps stay zero). Jit it once per model: one batched pullback
    per class.
  """
  shape = jax.eval_shape(
    lambda x: _forward(model, variables, x, None)[1], images
  )
  zero = jnp.zeros(shape.shape, shape.dtype)

  # The map itself (aux) and the pullback at delta = 0 from one forward:
  # the gradient at the added delta is the gradient at the map.
  logits, vjp, fmap = jax.vjp(
    lambda d: _forward(model, variables, images, d), zero, has_aux=True
  )
  cam = _weigh(vjp, logits, fmap)
  cam = cam / jnp.maximum(cam.max(axis=(2, 3), keepdims=True), 1e-12)
  if offset is not None:
    logits = logits - jnp.asarray(offset, jnp.float32)
  return jax.nn.sigmoid(logits), cam
