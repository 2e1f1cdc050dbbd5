"""Grad-CAM for every model: by hand for linear heads on pooled maps, the
AGT teacher through each class's own group head, ViT's patch grid, and the
same maps as the transfer networks' Grad-CAM where both read one map."""

import jax
import numpy as np
import pytest

from agt_jax import models
from agt_jax.models import cam, transfer

X = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3)).astype(np.uint8)
GROUPS = ((0, 3), (1, 2, 4))


def _by_hand(fmap, w):
  """Linear head on the mean-pooled map: dy_c/dA_k(h, w) = W[k, c] / (hw),
  so the map is relu(sum_k W[k, c] A_k), scaled to a maximum of 1."""
  m = np.maximum(np.einsum("nhwk,kc->nchw", fmap, w), 0)
  return m / np.maximum(m.max(axis=(2, 3), keepdims=True), 1e-12)


def _map(name, params, batch_stats):
  enc = models.make_encoder(name, pool=False)
  v = {"params": params}
  if batch_stats:
    v["batch_stats"] = batch_stats
  return np.asarray(enc.apply(v, X), np.float64)


@pytest.mark.parametrize("name", ["resnet_tiny", "densenet_tiny"])
def test_student_and_teacher_by_hand(name):
  student = models.Student(models.make_encoder(name), num_classes=5)
  v = student.init(jax.random.key(0), X)
  fmap = _map(name, v["params"]["encoder"], v["batch_stats"]["encoder"])
  probs, got = cam.grad_cam(student, v, X)
  w = np.asarray(v["params"]["head"]["kernel"], np.float64)
  np.testing.assert_allclose(got, _by_hand(fmap, w), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(
    probs, jax.nn.sigmoid(student.apply(v, X)[0]), rtol=1e-6
  )

  teacher = models.Teacher(models.make_encoder(name), GROUPS, num_classes=5)
  v = teacher.init(jax.random.key(1), X)
  fmap = _map(name, v["params"]["encoder"], v["batch_stats"]["encoder"])
  # Class c's column is in its own group's head.
  w = np.zeros((fmap.shape[-1], 5))
  for g, classes in enumerate(GROUPS):
    k = np.asarray(v["params"][models.head_name(g)]["kernel"], np.float64)
    w[:, list(classes)] = k
  _, got = cam.grad_cam(teacher, v, X)
  np.testing.assert_allclose(got, _by_hand(fmap, w), rtol=1e-4, atol=1e-5)


def test_vit_maps_the_patch_grid_and_each_image_alone():
  student = models.Student(models.make_encoder("vit_tiny"), num_classes=4)
  v = student.init(jax.random.key(0), X)
  fn = jax.jit(lambda x: cam.grad_cam(student, v, x))
  probs, got = fn(X)
  grid = 32 // student.encoder.patch
  assert got.shape == (3, 4, grid, grid)
  assert np.all((got >= 0) & (got <= 1)) and np.any(got > 0)
  # One batched pullback equals one image at a time.
  for i in range(3):
    _, one = cam.grad_cam(student, v, X[i : i + 1])
    np.testing.assert_allclose(got[i], one[0], rtol=1e-4, atol=1e-6)


def test_same_maps_as_the_transfer_networks_grad_cam():
  net = models.TransferNet(
    models.make_encoder("resnet_tiny", pool=False), num_classes=3, head="mlp"
  )
  v = net.init(jax.random.key(0), X)
  p1, c1 = transfer.grad_cam(net, v, X)
  p2, c2 = cam.grad_cam(net, v, X)
  np.testing.assert_allclose(p1, p2, rtol=1e-6)
  np.testing.assert_allclose(c1, c2, rtol=1e-5, atol=1e-6)


def test_models_it_cannot_read_say_why():
  multi = models.MultiTeacher(
    models.make_encoder("resnet_tiny"), GROUPS, num_classes=5
  )
  v = multi.init(jax.random.key(0), X)
  with pytest.raises(ValueError, match="passed 2"):
    cam.grad_cam(multi, v, X)
  enc = models.make_encoder("resnet_tiny")
  v = enc.init(jax.random.key(0), X)
  with pytest.raises(ValueError, match="class logits"):
    cam.grad_cam(enc, v, X)


@pytest.mark.parametrize(
  "name", ["efficientnet_tiny", "convnext_test", "swin_test"]
)
def test_every_encoder_family_marks_its_map(name):
  """The newer encoders carry a CamPoint: the student's Grad-CAM has the
  model's probabilities and non-trivial maps in [0, 1]."""
  x = np.random.default_rng(1).integers(0, 256, (2, 64, 64, 3)).astype(np.uint8)
  student = models.Student(models.make_encoder(name), num_classes=3)
  v = student.init(jax.random.key(0), x)
  probs, got = jax.jit(lambda v, x: cam.grad_cam(student, v, x))(v, x)
  np.testing.assert_allclose(
    probs, jax.nn.sigmoid(student.apply(v, x)[0]), rtol=1e-5, atol=1e-6
  )
  assert got.shape[:2] == (2, 3) and np.all((got >= 0) & (got <= 1))
  assert np.all(got.max(axis=(2, 3)) > 0.99)  # each map reaches its maximum
