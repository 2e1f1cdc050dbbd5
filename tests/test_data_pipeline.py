"""Images attached to sampler batches, augmentation, device feed, checkpoints."""

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from agt_jax.data import images, odir, pipeline, samplers
from tests import fixtures

GROUPS = ((1, 4, 5, 6), (2, 3), (0, 7))


@pytest.fixture(scope="module")
def small():
  """48 real label rows, images as an in-memory 80x80 array."""
  t = odir.packaged_label_table().take(np.arange(0, 6997, 145))
  arr = np.stack([fixtures.fundus_image(80, 80, i) for i in range(len(t))])
  return t, images.ArrayImageSource(arr)


def test_train_batches_have_augmented_images(small):
  t, src = small
  ds = samplers.group_mixed_batches(
    t.labels, GROUPS, batch_size=8, alpha=0.5, seed=0
  )
  with_img = pipeline.with_images(ds, src, crop=64, train=True, seed=1)
  b = with_img[3]
  assert b["image"].shape == (8, 64, 64, 3) and b["image"].dtype == np.uint8
  np.testing.assert_array_equal(b["image"], with_img[3]["image"])  # seeded
  other = pipeline.with_images(ds, src, crop=64, train=True, seed=2)[3]
  assert not np.array_equal(other["image"], b["image"])
  # Every image is a crop (maybe flipped) of its source.
  for k, i in enumerate(b["index"]):
    full = src[i]
    found = any(
      np.array_equal(c, b["image"][k])
      or np.array_equal(c[:, ::-1], b["image"][k])
      for y in range(17)
      for x in range(17)
      for c in [full[y : y + 64, x : x + 64]]
    )
    assert found


def test_eval_batches_center_crop_and_padding(small):
  t, src = small
  ds = pipeline.with_images(
    pipeline.eval_batches(len(t), t.labels, batch_size=10),
    src,
    crop=64,
    train=False,
  )
  assert len(ds) == 5
  last = ds[4]
  assert last["valid"].sum() == len(t) - 40
  np.testing.assert_array_equal(
    last["image"][0], images.center_crop(src[40], 64)
  )


def test_crop_larger_than_image_is_rejected():
  with pytest.raises(ValueError, match="crop 96 is larger"):
    images.center_crop(np.zeros((64, 64, 3), np.uint8), 96)


def test_file_source_reads_and_resizes(tmp_path):
  root = fixtures.make_odir_challenge(tmp_path / "odir")
  t = odir.load_odir5k(root)
  src = images.FileImageSource(tuple(t.paths), size=72)
  assert src[0].shape == (72, 72, 3)


def test_device_feed_shards_over_8_devices(small):
  t, src = small
  mesh = jax.make_mesh(
    (8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,)
  )
  ds = pipeline.with_images(
    samplers.group_mixed_batches(
      t.labels, GROUPS, batch_size=16, alpha=0.5, seed=0
    ),
    src,
    crop=64,
    train=True,
  )
  it = pipeline.DevicePrefetch(
    pipeline.to_iterator(ds), pipeline.data_sharding(mesh)
  )
  b = next(it)
  assert b["image"].shape == (16, 64, 64, 3)
  assert len(b["image"].sharding.device_set) == 8
  assert b["image"].addressable_shards[0].data.shape == (2, 64, 64, 3)
  assert b["group"].sharding.is_fully_replicated
  np.testing.assert_array_equal(np.asarray(b["index"]), ds[0]["index"])


def test_orbax_checkpoint_of_the_iterator(small, tmp_path):
  t, _ = small
  ds = samplers.group_mixed_batches(
    t.labels, GROUPS, batch_size=8, alpha=0.5, seed=0
  )
  it = pipeline.to_iterator(ds)
  for _ in range(7):
    next(it)
  mngr = ocp.CheckpointManager(tmp_path / "ckpt")
  mngr.save(
    7, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it))
  )
  mngr.wait_until_finished()
  expected = next(it)["index"]
  it2 = pipeline.to_iterator(ds)
  mngr.restore(
    7, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(it2))
  )
  np.testing.assert_array_equal(next(it2)["index"], expected)
  mngr.close()


def test_device_prefetch_checkpoints_the_consumers_position(small, tmp_path):
  """Two batches are queued ahead on the devices, but a checkpoint holds
  the position of the next batch the consumer takes: a restored run reads
  what a run without prefetch reads next."""
  t, _ = small
  ds = samplers.group_mixed_batches(
    t.labels, GROUPS, batch_size=8, alpha=0.5, seed=0
  )
  sharding = pipeline.data_sharding(jax.make_mesh((1,), ("data",)))
  it = pipeline.DevicePrefetch(pipeline.to_iterator(ds), sharding, depth=2)
  taken = [next(it) for _ in range(5)]
  assert len(it._queue) == 1  # batch 5 is already on the devices
  for t_, b in enumerate(taken):
    np.testing.assert_array_equal(np.asarray(b["index"]), ds[t_]["index"])
  mngr = ocp.CheckpointManager(tmp_path / "ckpt")
  mngr.save(
    5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it))
  )
  mngr.wait_until_finished()
  fresh = pipeline.DevicePrefetch(pipeline.to_iterator(ds), sharding)
  next(fresh)  # a queue that the restore must drop
  mngr.restore(
    5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh))
  )
  for t_ in (5, 6, 7):
    np.testing.assert_array_equal(
      np.asarray(next(fresh)["index"]), ds[t_]["index"]
    )
