"""Batch-norm recalibration on natural batches against numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from agt_jax import models
from agt_jax.train import batch_norm


class ConvBN(nn.Module):
  """conv -> BN -> relu -> conv -> BN -> mean pool."""

  @nn.compact
  def __call__(self, x, train=False):
    x = x.astype(jnp.float32) / 255.0
    x = nn.Conv(4, (3, 3), name="conv1")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn1")(x)
    x = nn.relu(x)
    x = nn.Conv(5, (3, 3), name="conv2")(x)
    x = nn.BatchNorm(use_running_average=not train, name="bn2")(x)
    return x.mean((1, 2))


def _images(k, n=6):
  return np.random.default_rng(k).integers(0, 255, (n, 8, 8, 3), np.uint8)


def test_recalibrated_statistics_equal_numpy_population_moments():
  model = ConvBN()
  v = model.init(jax.random.key(0), _images(0)[:1])
  batches = [_images(k) for k in range(3)]
  out = batch_norm.recalibrate(model, v, batches)
  # bn1's input is conv1 of the raw images: its population mean and
  # (biased) variance over every image and position of the three batches.
  conv = nn.Conv(4, (3, 3))
  h = np.concatenate(
    [
      np.asarray(
        conv.apply(
          {"params": v["params"]["conv1"]}, b.astype(np.float32) / 255.0
        ),
        np.float64,
      )
      for b in batches
    ]
  ).reshape(-1, 4)
  np.testing.assert_allclose(
    out["batch_stats"]["bn1"]["mean"], h.mean(0), rtol=1e-5, atol=1e-6
  )
  np.testing.assert_allclose(
    out["batch_stats"]["bn1"]["var"], h.var(0), rtol=1e-4, atol=1e-6
  )
  # bn2's input in the train-mode forward (bn1 normalised by each batch's
  # own statistics), recomputed by hand.
  h2 = []
  for b in batches:
    a = np.asarray(
      conv.apply(
        {"params": v["params"]["conv1"]}, b.astype(np.float32) / 255.0
      ),
      np.float64,
    )
    mu, var = a.mean((0, 1, 2)), a.var((0, 1, 2))
    p = v["params"]["bn1"]
    a = (a - mu) / np.sqrt(var + 1e-5) * np.asarray(p["scale"]) + np.asarray(
      p["bias"]
    )
    a = np.maximum(a, 0)
    h2.append(
      np.asarray(
        nn.Conv(5, (3, 3)).apply(
          {"params": v["params"]["conv2"]}, a.astype(np.float32)
        ),
        np.float64,
      )
    )
  h2 = np.concatenate(h2).reshape(-1, 5)
  np.testing.assert_allclose(
    out["batch_stats"]["bn2"]["mean"], h2.mean(0), rtol=1e-4, atol=1e-5
  )
  np.testing.assert_allclose(
    out["batch_stats"]["bn2"]["var"], h2.var(0), rtol=1e-3, atol=1e-5
  )
  # The parameters are untouched, the input variables too.
  assert out["params"] is v["params"]
  np.testing.assert_array_equal(v["batch_stats"]["bn1"]["mean"], 0.0)


def test_every_teacher_layer_is_recalibrated():
  enc = models.make_encoder("resnet_tiny")
  model = models.Teacher(enc, groups=((0, 1), (2,)), num_classes=3)
  v = model.init(jax.random.key(0), np.zeros((1, 16, 16, 3), np.uint8))
  rng = np.random.default_rng(0)
  imgs = [rng.integers(0, 255, (4, 16, 16, 3), np.uint8) for _ in range(2)]
  out = batch_norm.recalibrate(model, v, imgs)
  before = jax.tree_util.tree_leaves_with_path(v["batch_stats"])
  after = dict(jax.tree_util.tree_leaves_with_path(out["batch_stats"]))
  assert before and len(after) == len(before)
  for path, leaf in before:  # every mean / var moved from its init
    assert not np.allclose(after[path], leaf), jax.tree_util.keystr(path)
  with pytest.raises(ValueError, match="at least one batch"):
    batch_norm.recalibrate(model, v, [])
