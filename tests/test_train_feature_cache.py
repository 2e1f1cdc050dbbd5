"""Frozen-encoder features are computed once and recomputed when the
encoder, the crop or the images change."""

import jax
import numpy as np

from agt_jax import config as config_lib
from agt_jax import models
from agt_jax.data import images
from agt_jax.runtime import make_mesh
from agt_jax.train import evaluation, feature_cache, steps


def test_features_are_reused_and_invalidated(tmp_path, monkeypatch):
  rng = np.random.default_rng(0)
  source = images.ArrayImageSource(
    rng.integers(0, 255, (24, 20, 20, 3), dtype=np.uint8)
  )
  labels = (rng.random((24, 3)) < 0.5).astype(np.uint8)
  model = models.Student(models.make_encoder("resnet_tiny"), num_classes=3)
  state = steps.init_state(
    model, steps.adam(1e-3, 0.9, 0.99), (16, 16, 3), seed=0
  )
  variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
  cfg = config_lib.get_config("smoke", crop=16, eval_batch_size=16)
  calls = []
  predict = evaluation.predict

  def counting(*a, **k):
    calls.append(1)
    return predict(*a, **k)

  monkeypatch.setattr(evaluation, "predict", counting)
  kw = dict(cache_dir=tmp_path, dataset="d", model_name="resnet_tiny")
  idx = np.arange(20)

  def get(v=variables, i=idx, c=cfg):
    return feature_cache.features(
      model, v, source, i, labels[i], c, make_mesh(16), **kw
    )

  first = get()
  assert first.shape == (20, 16) and len(calls) == 1
  np.testing.assert_array_equal(get(), first)  # reused
  assert len(calls) == 1
  # Another encoder (one weight changed), other images, another crop.
  params = jax.tree.map(np.asarray, variables["params"])
  params["encoder"]["conv1"]["kernel"] = (
    params["encoder"]["conv1"]["kernel"] + 1e-3
  )
  get(v={**variables, "params": params})
  get(i=np.arange(1, 21))
  get(c=config_lib.replace(cfg, crop=12))
  assert len(calls) == 4
  assert len(list((tmp_path / "features").glob("*.npy"))) == 4
  # The fingerprint sees batch statistics too.
  stats = jax.tree.map(lambda x: np.asarray(x) + 1.0, variables["batch_stats"])
  assert feature_cache.encoder_fingerprint(
    {**variables, "batch_stats": stats}, model="m", crop=16
  ) != feature_cache.encoder_fingerprint(variables, model="m", crop=16)
