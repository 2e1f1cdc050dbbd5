"""Paper 001's heads on the encoder map: SE, spatial MHA, the MLP head,
Grad-CAM and its entropy, each against numpy written from the formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from agt_jax import models
from agt_jax.models import transfer

X = jnp.asarray(
  np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3)), jnp.uint8
)


def _np(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


@pytest.mark.parametrize("name", ["resnet_tiny", "densenet_tiny"])
def test_unpooled_encoder_returns_the_map_the_pooled_one_averages(name):
  pooled = models.make_encoder(name)
  spatial = models.make_encoder(name, pool=False)
  v = pooled.init(jax.random.key(0), X)
  fmap = spatial.apply(v, X)
  assert fmap.ndim == 4 and fmap.shape[0] == 3
  np.testing.assert_allclose(
    np.asarray(fmap).mean((1, 2)), pooled.apply(v, X), rtol=1e-5, atol=1e-6
  )


def test_squeeze_excite_by_hand():
  x = jnp.asarray(
    np.random.default_rng(1).normal(size=(2, 3, 4, 32)), jnp.float32
  )
  se = transfer.SqueezeExcite(reduction=16)
  v = se.init(jax.random.key(1), x)
  p = _np(v["params"])
  assert p["fc1"]["kernel"].shape == (32, 2)  # 32 / 16 hidden units
  s = np.asarray(x, np.float64).mean((1, 2))
  s = np.maximum(s @ p["fc1"]["kernel"] + p["fc1"]["bias"], 0)
  g = 1 / (1 + np.exp(-(s @ p["fc2"]["kernel"] + p["fc2"]["bias"])))
  np.testing.assert_allclose(
    se.apply(v, x), np.asarray(x) * g[:, None, None, :], rtol=1e-5
  )


def test_spatial_attention_by_hand():
  """Tokens are positions: t + softmax(q k^T / sqrt(dh)) v W_o, on LN(t)."""
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(2, 3, 2, 16)), jnp.float32)
  mha = transfer.SpatialSelfAttention(num_heads=4)
  v = mha.init(jax.random.key(2), x)
  # LayerNorm scale/bias away from 1/0 so the test sees them used.
  v["params"]["norm"]["scale"] = jnp.asarray(
    rng.uniform(0.5, 1.5, 16), jnp.float32
  )
  v["params"]["norm"]["bias"] = jnp.asarray(rng.normal(size=16), jnp.float32)
  p = _np(v["params"])
  t = np.asarray(x, np.float64).reshape(2, 6, 16)
  mu, var = t.mean(-1, keepdims=True), t.var(-1, keepdims=True)
  y = (t - mu) / np.sqrt(var + 1e-6) * p["norm"]["scale"] + p["norm"]["bias"]
  a = p["attention"]
  q = np.einsum("nlk,khd->nlhd", y, a["query"]["kernel"]) + a["query"]["bias"]
  k = np.einsum("nlk,khd->nlhd", y, a["key"]["kernel"]) + a["key"]["bias"]
  val = np.einsum("nlk,khd->nlhd", y, a["value"]["kernel"]) + a["value"]["bias"]
  logits = np.einsum("nqhd,nkhd->nhqk", q, k) / np.sqrt(4)
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  o = np.einsum("nhqk,nkhd->nqhd", w, val)
  out = np.einsum("nqhd,hdk->nqk", o, a["out"]["kernel"]) + a["out"]["bias"]
  want = (t + out).reshape(2, 3, 2, 16)
  np.testing.assert_allclose(mha.apply(v, x), want, rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match="do not split into 5 heads"):
    transfer.SpatialSelfAttention(num_heads=5).init(jax.random.key(0), x)


def test_mlp_head_dropout_only_in_training():
  head = transfer.MLPHead(3, hidden=512, dropout=0.5)
  f = jnp.ones((4, 16))
  v = head.init(jax.random.key(0), f)
  assert v["params"]["fc1"]["kernel"].shape == (16, 512)
  p = _np(v["params"])
  want = (
    np.maximum(np.ones((4, 16)) @ p["fc1"]["kernel"] + p["fc1"]["bias"], 0)
    @ p["out"]["kernel"]
    + p["out"]["bias"]
  )
  np.testing.assert_allclose(head.apply(v, f), want, rtol=1e-5, atol=1e-6)
  a = head.apply(v, f, train=True, rngs={"dropout": jax.random.key(1)})
  b = head.apply(v, f, train=True, rngs={"dropout": jax.random.key(2)})
  assert not np.allclose(a, b) and not np.allclose(a, want)


@pytest.mark.parametrize(
  "name,attention",
  [
    ("resnet_tiny", "none"),
    ("resnet_tiny", "se"),
    ("resnet_tiny", "mha"),
    ("densenet_tiny", "mha"),
    ("vit_tiny", "none"),
    ("vit_tiny", "se"),
  ],
)
def test_transfer_net_shapes_and_grad_cam_shapes(name, attention):
  model = models.TransferNet(
    models.make_encoder(name, pool=False),
    num_classes=3,
    attention=attention,
    num_heads=4,
  )
  v = model.init(jax.random.key(0), X)
  logits, pooled = model.apply(v, X)
  assert logits.shape == (3, 3) and pooled.ndim == 2
  probs, cam = transfer.grad_cam(model, v, X)
  fmap = model.apply(v, X, method=models.TransferNet.feature_map)
  assert cam.shape == (3, 3) + fmap.shape[1:3]
  assert float(cam.min()) >= 0 and float(cam.max()) <= 1 + 1e-6
  np.testing.assert_allclose(probs, jax.nn.sigmoid(logits), rtol=1e-5)


def test_attention_needs_a_spatial_map():
  model = models.TransferNet(
    models.make_encoder("vit_tiny"), num_classes=3, attention="mha", num_heads=4
  )
  with pytest.raises(ValueError, match="needs a spatial map"):
    model.init(jax.random.key(0), X)


def test_grad_cam_of_a_linear_head_by_hand():
  """Linear head on the mean-pooled map: dy_c/dA_k(h, w) = W[k, c] / (hw),
  so the map is relu(sum_k W[k, c] A_k) / (hw), scaled to max 1."""
  model = models.TransferNet(
    models.make_encoder("resnet_tiny", pool=False), num_classes=3, head="linear"
  )
  v = model.init(jax.random.key(0), X)
  fmap = np.asarray(
    model.apply(v, X, method=models.TransferNet.feature_map), np.float64
  )
  w = np.asarray(v["params"]["head"]["out"]["kernel"], np.float64)
  cam = np.maximum(np.einsum("nhwk,kc->nchw", fmap, w), 0)
  cam = cam / np.maximum(cam.max(axis=(2, 3), keepdims=True), 1e-12)
  _, got = transfer.grad_cam(model, v, X)
  np.testing.assert_allclose(got, cam, rtol=1e-4, atol=1e-5)


def test_cam_entropy_by_hand_and_gradients():
  uniform = jnp.ones((1, 4, 4))
  peak = jnp.zeros((1, 4, 4)).at[0, 1, 2].set(3.0)
  np.testing.assert_allclose(transfer.cam_entropy(uniform), [1.0], rtol=1e-6)
  np.testing.assert_allclose(transfer.cam_entropy(peak), [0.0], atol=1e-6)
  c = np.array([[1.0, 2.0], [3.0, 0.5]])
  p = c.ravel() / c.sum()
  want = -(p * np.log(p)).sum() / np.log(4)
  with jax.enable_x64(True):
    got = transfer.cam_entropy(jnp.asarray(c, jnp.float64)[None])
    np.testing.assert_allclose(got, [want], rtol=1e-10)
    check_grads(
      lambda m: transfer.cam_entropy(m),
      (jnp.asarray(c)[None],),
      order=2,
      modes=["rev"],
    )
  masked = transfer.cam_entropy(
    jnp.stack([uniform[0], uniform[0]]), where=jnp.array([True, False])
  )
  np.testing.assert_allclose(masked, [1.0, 0.0], rtol=1e-6)
