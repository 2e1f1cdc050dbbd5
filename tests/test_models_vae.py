"""The label-conditional VAE: the ELBO falls on a fixture, samples have the
training images' shape and range, the KL term by hand, and the balancing
plan brings every class to the largest count with observed label sets."""

import jax
import jax.numpy as jnp
import numpy as np

from agt_jax.models import vae
from agt_jax.train.vae import train_vae


def _fixture(n=48, size=16, seed=0):
  """Two label sets that look different: bright discs (class 0) and dark
  frames with a bright bar (class 1), some with both."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:size, :size]
  disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2
  images, labels = [], []
  for i in range(n):
    y = np.array([i % 2 == 0, i % 3 == 0], np.uint8)
    img = rng.integers(0, 30, (size, size, 3))
    if y[0]:
      img[disc] += 180
    if y[1]:
      img[:, size // 2 - 1 : size // 2 + 1] += 200
    images.append(np.clip(img, 0, 255).astype(np.uint8))
    labels.append(y)
  return np.stack(images), np.stack(labels)


def test_elbo_falls_and_samples_look_like_the_data():
  x, y = _fixture()
  model, params, losses = train_vae(x, y, steps=150, batch_size=16, lr=2e-3)
  assert losses[-20:].mean() < 0.8 * losses[:5].mean()
  s = vae.sample(model, params, y[:6], jax.random.key(1))
  assert s.shape == (6, 16, 16, 3) and s.dtype == np.uint8
  # Sampled class-0 images are brighter in the disc than class-1-only ones.
  assert s[y[:6, 0] == 1].mean() > s[(y[:6, 0] == 0)].mean()


def test_kl_term_by_hand():
  mu = jnp.array([[0.5, -1.0]])
  logvar = jnp.array([[0.2, -0.3]])
  logits = jnp.zeros((1, 2, 2, 3))
  img = jnp.zeros((1, 2, 2, 3), jnp.uint8)
  got = vae.elbo_loss(logits, img, mu, logvar)
  kl = 0.5 * np.sum(
    np.array([0.25, 1.0]) + np.exp([0.2, -0.3]) - [0.2, -0.3] - 1
  )
  np.testing.assert_allclose(got, [12 * np.log(2) + kl], rtol=1e-5)


def test_balancing_plan_reaches_the_largest_count():
  y = np.array(
    [[1, 0, 0]] * 10 + [[0, 1, 0]] * 4 + [[0, 1, 1]] * 2 + [[0, 0, 1]] * 1
  )
  plan = vae.balancing_plan(y)
  add = sum(np.array(k) * v for k, v in plan.items())
  counts = y.sum(0) + add
  assert counts.min() >= 10
  assert set(plan) <= {tuple(r) for r in y.tolist()}  # observed sets only


def test_generate_balanced_draws_the_plan_and_keeps_the_images_shape():
  from agt_jax.train.vae import generate_balanced

  x, y = _fixture(n=30)
  got = generate_balanced(x, y, steps=3, seed=0)
  plan = vae.balancing_plan(y)
  assert len(got["images"]) == sum(plan.values()) == len(got["labels"])
  assert got["images"].shape[1:] == x.shape[1:]
  assert got["images"].dtype == np.uint8
  np.testing.assert_array_equal(got["counts_before"], y.sum(0))
  np.testing.assert_array_equal(
    got["counts_after"], y.sum(0) + got["labels"].sum(0)
  )
  assert (
    got["counts_after"].min() == got["counts_after"].max() == y.sum(0).max()
  )
  observed = {tuple(r) for r in y.astype(int)}
  assert {tuple(r) for r in got["labels"]} <= observed
  assert len(got["losses"]) == 3
  with np.testing.assert_raises(ValueError):
    generate_balanced(x[:, :12, :12], y, steps=1)  # 12 is not divisible by 8

  class Source:  # a fold's fit_source: random access, one image per index
    def __len__(self):
      return len(x)

    def __getitem__(self, i):
      return x[i]

  # Read a minibatch at a time from a source: the same fit, draw by draw.
  from_source = generate_balanced(Source(), y, steps=3, seed=0)
  np.testing.assert_array_equal(from_source["losses"], got["losses"])
  np.testing.assert_array_equal(from_source["images"], got["images"])


def test_balancing_plan_leaves_an_absent_class_at_zero():
  """A class no training image has (a small split) has no label set to
  draw from: the others are balanced, it stays at zero (this raised)."""
  y = np.array([[1, 0, 0]] * 6 + [[0, 1, 0]] * 2)
  plan = vae.balancing_plan(y)
  counts = y.sum(0) + sum(np.array(k) * v for k, v in plan.items())
  np.testing.assert_array_equal(counts, [6, 6, 0])
