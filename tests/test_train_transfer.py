"""The transfer step (paper 001): frozen encoder, the three losses, the
Grad-CAM entropy term, one compile; initialising from a selected
checkpoint; the flip-and-rotate augmentation; macro F1 selection."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agt_jax import config as config_lib
from agt_jax import metrics, models
from agt_jax.data import images
from agt_jax.errors import ConfigError
from agt_jax.models import transfer
from agt_jax.train import steps
from agt_jax.train import transfer as transfer_trainer
from tests import references as ref

COUNTS = (40, 12, 3)


def make(*, freeze=False, attention="none", head="mlp", lr=1e-2):
  model = models.TransferNet(
    models.make_encoder("resnet_tiny", pool=False),
    num_classes=3,
    attention=attention,
    head=head,
    freeze_encoder=freeze,
  )
  tx = steps.adam(lr, 0.9, 0.99)
  if freeze:
    tx = steps.frozen_encoder_tx(tx)
  return model, tx, steps.init_state(model, tx, (32, 32, 3), seed=0)


def batch(t, n=8):
  rng = np.random.default_rng(t)
  labels = (rng.random((n, 3)) < 0.4).astype(np.uint8)
  labels[0] = 1  # every class has a positive
  return {
    "image": rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8),
    "labels": labels,
  }


def host(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


@pytest.mark.parametrize("attention", ["none", "se", "mha"])
def test_frozen_encoder_stays_bit_identical_and_one_compile(attention):
  model, tx, state = make(freeze=True, attention=attention)
  before = host(state)
  options = steps.TransferOptions(loss="focal")

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(s, b):
    return steps.transfer_step(s, b, model=model, tx=tx, options=options)

  chex.clear_trace_counter()
  losses = []
  for _t in range(3):
    state, m = step(state, batch(0))
    losses.append(float(m["loss"]))
  after = host(state)
  chex.assert_trees_all_equal(
    after["params"]["encoder"], before["params"]["encoder"]
  )
  chex.assert_trees_all_equal(after["batch_stats"], before["batch_stats"])
  assert not np.array_equal(
    after["params"]["head"]["out"]["kernel"],
    before["params"]["head"]["out"]["kernel"],
  )
  assert losses[-1] < losses[0]


def test_full_fine_tune_moves_encoder_and_batch_stats():
  model, tx, state = make()
  before = host(state)
  state, _ = steps.transfer_step(
    state, batch(0), model=model, tx=tx, options=steps.TransferOptions()
  )
  after = host(state)
  assert not np.array_equal(
    after["params"]["encoder"]["conv1"]["kernel"],
    before["params"]["encoder"]["conv1"]["kernel"],
  )
  assert not np.array_equal(
    after["batch_stats"]["encoder"]["bn1"]["mean"],
    before["batch_stats"]["encoder"]["bn1"]["mean"],
  )


def test_transfer_losses_against_references():
  rng = np.random.default_rng(3)
  z = rng.normal(size=(6, 3)) * 2
  y = (rng.random((6, 3)) < 0.4).astype(np.float64)
  with jax.enable_x64(True):
    zj, yj = jnp.asarray(z), jnp.asarray(y)
    bce = steps.transfer_loss(zj, yj, steps.TransferOptions())
    np.testing.assert_allclose(bce, ref.bce(z, y), rtol=1e-12)
    focal = steps.transfer_loss(zj, yj, steps.TransferOptions(loss="focal"))
    np.testing.assert_allclose(
      focal, ref.torchvision_focal(z, y, alpha=0.5, gamma=1.0), rtol=1e-10
    )
    cb = steps.transfer_loss(
      zj, yj, steps.TransferOptions(loss="cb", class_counts=COUNTS)
    )
    w = ref.cb_weights(np.array(COUNTS), 0.999)
    want = -(
      w * y * np.log(ref.sigmoid(z)) + (1 - y) * np.log(1 - ref.sigmoid(z))
    )
    # The step carries the counts as float32: weights to float32 precision.
    np.testing.assert_allclose(cb, want, rtol=1e-6)
  with pytest.raises(ValueError, match="class_counts"):
    steps.TransferOptions(loss="cb")


def test_cam_entropy_term_is_the_grad_cam_entropy_of_positives():
  """Linear head, frozen encoder: training mode equals eval mode, so the
  step's entropy is the mean entropy of grad_cam's maps over the positive
  (image, class) pairs; the loss is BCE + w (1 - H)."""
  model, tx, state = make(freeze=True, head="linear")
  b = batch(1)
  v = {"params": state["params"], "batch_stats": state["batch_stats"]}
  probs, cams = transfer.grad_cam(model, v, jnp.asarray(b["image"]))
  pos = b["labels"] > 0
  want_h = float(transfer.cam_entropy(cams, where=pos).sum() / pos.sum())
  want_bce = float(
    ref.bce(
      np.asarray(jax.scipy.special.logit(probs), np.float64), b["labels"]
    ).mean()
  )
  _, m = steps.transfer_step(
    state, b, model=model, tx=tx, options=steps.TransferOptions(cam_entropy=0.5)
  )
  np.testing.assert_allclose(float(m["cam_entropy"]), want_h, rtol=1e-4)
  np.testing.assert_allclose(float(m["task_loss"]), want_bce, rtol=1e-4)
  np.testing.assert_allclose(
    float(m["loss"]), want_bce + 0.5 * (1 - want_h), rtol=1e-4
  )


def test_cam_entropy_gradient_reaches_the_head():
  """The entropy term alone (BCE cancelled by zero labels is not possible,
  so compare two weights): its gradient is non-zero and second order."""
  model, tx, state = make(freeze=True, head="linear")
  b = batch(2)
  g = {}
  for w in (0.0, 1.0):
    s1, _ = steps.transfer_step(
      host(state),
      b,
      model=model,
      tx=tx,
      options=steps.TransferOptions(cam_entropy=w),
    )
    g[w] = host(s1)["params"]["head"]["out"]["kernel"]
  assert not np.allclose(g[0.0], g[1.0])


def test_init_from_a_selected_transfer_checkpoint_loads_every_variable(
  tmp_path,
):
  from agt_jax.models import weights
  from agt_jax.train.checkpoint import BestCheckpoint

  model, tx, state = make(attention="se")
  state, _ = steps.transfer_step(
    state, batch(0), model=model, tx=tx, options=steps.TransferOptions()
  )
  variables = host(
    {"params": state["params"], "batch_stats": state["batch_stats"]}
  )
  best = BestCheckpoint(tmp_path / "transfer_best")
  best.save(1, variables, {"step": 1})
  best.close()
  _, _, fresh = make(attention="se")
  loaded = transfer_trainer.load_init(
    str(tmp_path / "transfer_best"), host(fresh)
  )
  chex.assert_trees_all_equal(loaded["params"], variables["params"])
  chex.assert_trees_all_equal(loaded["batch_stats"], variables["batch_stats"])
  # Another head (no SE): only the encoder comes across.
  _, _, other = make(attention="none")
  other = host(other)
  assert weights.load_variables(tmp_path / "transfer_best", other) is None
  part = transfer_trainer.load_init(str(tmp_path / "transfer_best"), other)
  chex.assert_trees_all_equal(
    part["params"]["encoder"], variables["params"]["encoder"]
  )
  chex.assert_trees_all_equal(part["params"]["head"], other["params"]["head"])


def test_flip_rotate_augmentation():
  img = np.random.default_rng(0).integers(0, 255, (40, 40, 3), np.uint8)
  a = images.flip_rotate(img, 32, np.random.default_rng(5))
  b = images.flip_rotate(img, 32, np.random.default_rng(5))
  assert a.shape == (32, 32, 3) and np.array_equal(a, b)
  # No rotation: exactly the flips then the centre crop.
  rng = np.random.default_rng(7)
  flips = np.random.default_rng(7).random(2) < 0.5
  want = img[:, ::-1] if flips[0] else img
  want = want[::-1] if flips[1] else want
  got = images.flip_rotate(img, 32, rng, degrees=0.0)
  np.testing.assert_array_equal(got, images.center_crop(want, 32))
  # A 90-degree bound really rotates: a bright corner moves.
  corner = np.zeros((40, 40, 3), np.uint8)
  corner[:20, :20] = 255
  outs = {
    images.flip_rotate(
      corner, 40, np.random.default_rng(s), degrees=90
    ).tobytes()
    for s in range(4)
  }
  assert len(outs) == 4


def test_macro_f1_by_hand():
  y = np.array([[1, 0], [1, 1], [0, 0], [0, 1]])
  p = np.array([[0.9, 0.2], [0.4, 0.6], [0.6, 0.5], [0.1, 0.7]])
  # class 0: tp 1, fp 1, fn 1 -> 0.5; class 1: tp 2, fp 0, fn 0 -> 1.0
  # (0.5 is not > 0.5).
  assert metrics.macro_f1(y, p) == pytest.approx(0.75)


def test_transfer_config_checks():
  base = config_lib.get_config("smoke", trainer="transfer", student=False)
  with pytest.raises(ConfigError, match="grouping=none"):
    config_lib.validate(base)
  with pytest.raises(ConfigError, match="distilled"):
    config_lib.validate(config_lib.replace(base, grouping="none", student=True))
  with pytest.raises(ConfigError, match="attention='x'"):
    config_lib.validate(
      config_lib.replace(base, grouping="none", attention="x")
    )
  with pytest.raises(ConfigError, match="dropout"):
    config_lib.validate(config_lib.replace(base, grouping="none", dropout=1.0))
  config_lib.validate(config_lib.replace(base, grouping="none"))


def test_generated_images_join_the_fit_split_only(tmp_path):
  """``extra_train`` (Task 4a): the .npz's images follow the real training
  images in the fit split (labels, counts, the source the batches read);
  validation and test are untouched; a file for other classes or another
  size is refused with one line naming it, a missing one at validation."""
  from agt_jax.errors import InputError
  from agt_jax.train import loop

  base = config_lib.get_config(
    "smoke", classes=("D", "G", "A"), cache_dir=str(tmp_path / "cache")
  )
  plain = loop.load_fold(base)
  rng = np.random.default_rng(0)
  extra = rng.integers(0, 255, (5, base.image_size, base.image_size, 3))
  labels = np.eye(3, dtype=np.int64)[[1, 1, 2, 2, 2]]
  path = tmp_path / "samples.npz"
  np.savez(
    path,
    images=extra.astype(np.uint8),
    labels=labels,
    class_names=np.array(["D", "G", "A"]),
  )
  data = loop.load_fold(config_lib.replace(base, extra_train=str(path)))
  n = len(plain.fit_idx)
  assert data.num_fit == n + 5 and len(data.fit_source) == n + 5
  np.testing.assert_array_equal(data.y_fit[:n], plain.y_fit)
  np.testing.assert_array_equal(data.y_fit[n:], labels)
  np.testing.assert_array_equal(data.counts, plain.counts + labels.sum(0))
  np.testing.assert_array_equal(data.fit_source[n + 4], extra[4])
  np.testing.assert_array_equal(data.fit_source[0], plain.fit_source[0])
  np.testing.assert_array_equal(data.val_idx, plain.val_idx)
  np.testing.assert_array_equal(data.test_idx, plain.test_idx)
  np.savez(
    path,
    images=extra.astype(np.uint8),
    labels=labels,
    class_names=np.array(["D", "G", "C"]),
  )
  with pytest.raises(InputError, match=r"samples\.npz: class_names"):
    loop.load_fold(config_lib.replace(base, extra_train=str(path)))
  np.savez(
    path,
    images=extra[:, :8, :8].astype(np.uint8),
    labels=labels,
    class_names=np.array(["D", "G", "A"]),
  )
  with pytest.raises(InputError, match="image_size"):
    loop.load_fold(config_lib.replace(base, extra_train=str(path)))
  with pytest.raises(ConfigError, match="extra_train"):
    config_lib.validate(
      config_lib.replace(base, extra_train=str(tmp_path / "none.npz"))
    )
