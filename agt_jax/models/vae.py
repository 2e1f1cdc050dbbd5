"""A label-conditional convolutional VAE (paper 001, Task 4a: extra images
for the under-represented labels).

``ConditionalVAE`` encodes an image and its multi-hot labels to a diagonal
Gaussian ``q(z | x, y)``, and decodes ``(z, y)`` to per-pixel Bernoulli
means in [0, 1] (images are scaled from uint8). Sampling ``z ~ N(0, I)`` with
a chosen label vector draws an image of that label set, which is what
balancing by label set needs. The ELBO per image (nats):

.. math::
   \\mathcal{L} = \\sum_{p} \\mathrm{BCE}(\\hat x_p, x_p)
   + \\tfrac12 \\sum_j (\\mu_j^2 + \\sigma_j^2 - \\log \\sigma_j^2 - 1)

Reference: Kingma & Welling, *Auto-encoding variational Bayes*, ICLR 2014;
Sohn et al., *Learning structured output representation using deep
conditional generative models*, NeurIPS 2015.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn


class ConditionalVAE(nn.Module):
  """Images ``[N, S, S, 3]`` (``S`` divisible by ``2 ** len(widths)``) and
  labels ``[N, C]``; ``__call__`` returns ``(means [N, S, S, 3], mu,
  logvar)`` with a reparameterised draw (rng stream ``"sample"``)."""

  size: int
  num_classes: int
  latent: int = 32
  widths: Sequence[int] = (32, 64, 128)

  def setup(self):
    self.enc = [
      nn.Conv(w, (4, 4), (2, 2), padding=((1, 1), (1, 1)), name=f"enc{i}")
      for i, w in enumerate(self.widths)
    ]
    self.to_stats = nn.Dense(2 * self.latent, name="stats")
    cells = self.size // 2 ** len(self.widths)
    self.cells = cells
    self.from_z = nn.Dense(cells * cells * self.widths[-1], name="from_z")
    rev = list(self.widths[::-1][1:]) + [3]
    self.dec = [
      nn.ConvTranspose(w, (4, 4), (2, 2), padding="SAME", name=f"dec{i}")
      for i, w in enumerate(rev)
    ]

  def encode(self, images, labels):
    x = images.astype(jnp.float32) / 255.0
    y = labels.astype(jnp.float32)
    x = jnp.concatenate(
      [x, jnp.broadcast_to(y[:, None, None, :], (*x.shape[:3], y.shape[-1]))],
      axis=-1,
    )
    for conv in self.enc:
      x = nn.leaky_relu(conv(x), 0.2)
    stats = self.to_stats(jnp.concatenate([x.reshape(len(x), -1), y], -1))
    mu, logvar = jnp.split(stats, 2, axis=-1)
    return mu, jnp.clip(logvar, -10.0, 10.0)

  def decode_logits(self, z, labels):
    h = self.from_z(jnp.concatenate([z, labels.astype(jnp.float32)], -1))
    h = nn.relu(h).reshape(len(z), self.cells, self.cells, self.widths[-1])
    for i, deconv in enumerate(self.dec):
      h = deconv(h)
      if i < len(self.dec) - 1:
        h = nn.relu(h)
    return h

  def __call__(self, images, labels):
    mu, logvar = self.encode(images, labels)
    eps = jax.random.normal(self.make_rng("sample"), mu.shape)
    z = mu + jnp.exp(0.5 * logvar) * eps
    return self.decode_logits(z, labels), mu, logvar


def elbo_loss(logits, images, mu, logvar):
  """`[N]` negative ELBO (nats): per-pixel Bernoulli cross-entropy summed
  over pixels and channels, plus the KL to N(0, I)."""
  x = images.astype(jnp.float32) / 255.0
  rec = optax.sigmoid_binary_cross_entropy(logits, x)
  rec = rec.reshape(len(x), -1).sum(-1)
  kl = 0.5 * jnp.sum(mu**2 + jnp.exp(logvar) - logvar - 1.0, axis=-1)
  return rec + kl


def sample(model: ConditionalVAE, params, labels, key) -> np.ndarray:
  """uint8 images ``[N, S, S, 3]`` of the label vectors ``labels`` (the
  decoder's means, rounded)."""
  labels = jnp.asarray(labels, jnp.float32)
  z = jax.random.normal(key, (len(labels), model.latent))
  logits = model.apply(
    {"params": params}, z, labels, method=ConditionalVAE.decode_logits
  )
  return np.asarray(jnp.round(jax.nn.sigmoid(logits) * 255.0), np.uint8)


def balancing_plan(labels, *, target: str = "max") -> dict:
  """How many images to draw of each observed label set so every class
  reaches the most frequent class's count (``target="max"``), drawing from
  the rarest class's label sets first; ``{label set (tuple): count}``.

  Greedy and exact in what it promises: each draw adds one image of an
  observed label set (so co-occurrences stay real), chosen among the sets
  holding the currently rarest class, preferring the set that adds the
  fewest images to classes already at the target. A class with no image
  in ``labels`` has no label set to draw from and stays at zero."""
  labels = np.asarray(labels).astype(np.int64)
  sets = np.unique(labels, axis=0)
  counts = labels.sum(0)
  goal = counts.max() if target == "max" else int(target)
  seen = counts > 0
  plan: dict[tuple, int] = {}
  for _ in range(int(goal * labels.shape[1])):  # a bound: every draw helps
    short = np.flatnonzero((counts < goal) & seen)
    if len(short) == 0:
      break
    c = short[np.argmin(counts[short])]
    holding = sets[sets[:, c] == 1]
    over = (holding * (counts >= goal)).sum(1)
    pick = holding[np.argmin(over)]
    key = tuple(int(v) for v in pick)
    plan[key] = plan.get(key, 0) + 1
    counts = counts + pick
  return plan
