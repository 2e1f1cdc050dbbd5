"""TFA-LT's heads on frozen features (paper 002): the residual linear
adapter (Eq. 1), cosine logits against class text embeddings (Eq. 2) and the
linear ensembler of two adapters (Eq. 3)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

__all__ = ["LinearEnsembler", "ResidualAdapter", "cosine_logits"]


class ResidualAdapter(nn.Module):
  r"""``f = σ(λ) f' + (1 - σ(λ)) A f'`` (paper 002, Eq. 1).

  ``A`` is a bias-free ``d x d`` linear map and ``λ`` a learnable scalar
  (initialised at ``lambda_init``; the paper gives no value, 0 starts at an
  even mix). Features ``[N, d] -> [N, d]``.
  """

  lambda_init: float = 0.0

  @nn.compact
  def __call__(self, features):
    d = features.shape[-1]
    lam = self.param(
      "lam", lambda _: jnp.asarray(self.lambda_init, jnp.float32)
    )
    adapted = nn.Dense(d, use_bias=False, name="A")(features)
    s = jax.nn.sigmoid(lam)
    return s * features + (1.0 - s) * adapted


def cosine_logits(features, text_embeddings, *, tau: float = 0.01):
  r"""``sim(f_t^c, f_v) / τ`` (paper 002, Eq. 2): cosine similarity of each
  image feature ``[N, d]`` to each class embedding ``[C, d]``, over the
  temperature; ``[N, C]``. Softmax of these is Eq. 2's ``p(ŷ = c | I)``."""
  f = features / jnp.maximum(
    jnp.linalg.norm(features, axis=-1, keepdims=True), 1e-12
  )
  t = text_embeddings / jnp.maximum(
    jnp.linalg.norm(text_embeddings, axis=-1, keepdims=True), 1e-12
  )
  return f @ t.T / tau


class LinearEnsembler(nn.Module):
  """``K(x_w, x_r)``: one linear map of the two adapters' outputs,
  concatenated (paper 002, Eq. 3). Feature-wise: ``x`` are the adapted
  features and ``out`` is ``d`` (then :func:`cosine_logits`); logit-wise:
  ``x`` are the two adapters' logits and ``out`` is ``C``."""

  out: int

  @nn.compact
  def __call__(self, x_w, x_r):
    return nn.Dense(self.out, name="K")(jnp.concatenate([x_w, x_r], -1))
