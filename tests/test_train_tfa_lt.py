"""TFA-LT on features (paper 002): the focal loss, the stand-in class
embeddings, the sampling plans, and both stages learning on separable
features; experiments.tfa_lt from an .npz and at smoke size."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from agt_jax.data import samplers
from agt_jax.train import tfa_lt
from tests.cli import run_cli


def test_softmax_focal_loss_by_hand():
  z = np.array([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]])
  y = np.array([0, 1])
  p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
  py = p[np.arange(2), y]
  with jax.enable_x64(True):
    zj, yj = jnp.asarray(z), jnp.asarray(y)
    for gamma in (0.0, 1.0, 2.0):
      np.testing.assert_allclose(
        tfa_lt.softmax_focal_loss(zj, yj, gamma=gamma),
        -((1 - py) ** gamma) * np.log(py),
        rtol=1e-12,
      )
    check_grads(
      lambda a: tfa_lt.softmax_focal_loss(a, yj, gamma=2.0).sum(),
      (zj,),
      order=2,
      modes=["rev"],
    )
  # A confident example (p_y == 1 in float32) keeps a finite gradient.
  sure = jnp.array([[200.0, 0.0]])
  for gamma in (0.0, 2.0):
    g = jax.grad(
      lambda a: tfa_lt.softmax_focal_loss(a, jnp.array([0]), gamma=gamma).sum()
    )(sure)
    assert np.isfinite(np.asarray(g)).all()


def test_orthonormal_embeddings():
  t = tfa_lt.orthonormal_embeddings(5, 16, seed=3)
  np.testing.assert_allclose(t @ t.T, np.eye(5), atol=1e-6)
  np.testing.assert_array_equal(t, tfa_lt.orthonormal_embeddings(5, 16, seed=3))
  with pytest.raises(ValueError, match="d >= C"):
    tfa_lt.orthonormal_embeddings(20, 16)


def test_sampling_plans():
  rng = np.random.default_rng(0)
  pool = np.array([3, 5, 7, 9, 11])
  plan = tfa_lt._plan(pool, 4, 2, rng)
  assert plan.shape == (12, 2)  # ceil(5 / 2) = 3 steps an epoch
  assert set(plan.ravel()) <= set(pool.tolist())
  # Shuffled epochs: the first len(pool) draws are a permutation.
  np.testing.assert_array_equal(np.sort(plan.ravel()[:5]), pool)
  p = np.array([0.0, 0.0, 0.0, 0.0, 1.0])
  wrs = tfa_lt._plan(pool, 2, 2, rng, p)
  assert (wrs == 11).all()


def separable(n_per=(120, 40, 12), d=16, seed=0, test_per=20):
  rng = np.random.default_rng(seed)
  mu = np.eye(d)[: len(n_per)] * 4.0
  y = np.concatenate([np.full(n, k) for k, n in enumerate(n_per)])
  yt = np.repeat(np.arange(len(n_per)), test_per)
  return (
    mu[y] + rng.normal(size=(len(y), d)) * 0.5,
    y,
    mu[yt] + rng.normal(size=(len(yt), d)) * 0.5,
    yt,
  )


def test_both_stages_learn_separable_single_label_features():
  x, y, xt, yt = separable()
  text = tfa_lt.orthonormal_embeddings(3, 16, seed=1)  # not the class axes
  out = tfa_lt.run_tfa_lt(
    x, y, xt, text, tfa_lt.TFAOptions(stage1_epochs=30, stage2_epochs=10)
  )
  acc = {k: float((v.argmax(1) == yt).mean()) for k, v in out["scores"].items()}
  assert set(acc) == {
    "zero_shot",
    "adapter",
    "ensembler_logit",
    "ensembler_feature",
    "tfa_logit",
    "tfa_feature",
  }
  assert acc["adapter"] >= 0.9 and acc["tfa_logit"] >= 0.9, acc
  for k in ("wrs", "rus", "plain"):
    s = np.asarray(out["sigma_lambda"][k])
    assert s.ndim == 1 and len(s) > 0
    assert ((s > 0) & (s < 1)).all()
  # Zero-shot with the class directions as "text" is the nearest-direction
  # classifier: right on separable data.
  z = tfa_lt.run_tfa_lt(
    x,
    y,
    xt,
    np.eye(16)[:3],
    tfa_lt.TFAOptions(stage1_epochs=1, stage2_epochs=1),
  )["scores"]["zero_shot"]
  assert float((z.argmax(1) == yt).mean()) == 1.0


def test_multilabel_form_runs_and_learns():
  x, y, xt, yt = separable(seed=2)
  onehot, onehot_t = np.eye(3)[y], np.eye(3)[yt]
  out = tfa_lt.run_tfa_lt(
    x,
    onehot,
    xt,
    tfa_lt.orthonormal_embeddings(3, 16),
    tfa_lt.TFAOptions(objective="bce", stage1_epochs=30, stage2_epochs=10),
  )
  from sklearn.metrics import roc_auc_score

  auc = roc_auc_score(onehot_t, out["scores"]["tfa_logit"], average="macro")
  assert auc > 0.95
  assert out["scores"]["tfa_feature"].shape == (60, 3)
  # The RUS pool thins the head class.
  kept = samplers.random_undersample_indices(onehot, seed=0)
  assert (y[kept] == 0).sum() < 120


def test_experiment_from_feature_and_text_files(tmp_path):
  from experiments import tfa_lt as exp

  x, y, xt, yt = separable()
  np.savez(
    tmp_path / "f.npz",
    train_features=x,
    train_labels=y,
    test_features=xt,
    test_labels=yt,
    class_names=np.array(["a", "b", "c"]),
  )
  np.savez(tmp_path / "t.npz", text_embeddings=np.eye(16)[:3])
  wd = tmp_path / "run"
  code = exp.run(
    [
      "--features",
      str(tmp_path / "f.npz"),
      "--text",
      str(tmp_path / "t.npz"),
      "--epochs",
      "5",
      "2",
      "--seeds",
      "2",
      "--workdir",
      str(wd),
    ]
  )
  assert code == 0
  res = json.loads((wd / "results.json").read_text())
  assert [r["seed"] for r in res["runs"]] == [0, 1]
  assert not res["runs"][0]["multilabel"]
  report = (wd / "report.md").read_text()
  assert "no text guidance" not in report and "t.npz" in report
  assert "| ✓ | feature-wise | TFA-LT (feature) |" in report
  assert (wd / "sigma_lambda.png").stat().st_size > 1000
  # Bad inputs: one clear line each, exit 2.
  np.savez(tmp_path / "bad.npz", train_features=x)
  assert (
    exp.run(["--features", str(tmp_path / "bad.npz"), "--workdir", str(wd)])
    == 2
  )
  np.savez(tmp_path / "t5.npz", text_embeddings=np.eye(16)[:5])
  assert (
    exp.run(
      [
        "--features",
        str(tmp_path / "f.npz"),
        "--text",
        str(tmp_path / "t5.npz"),
        "--workdir",
        str(wd),
      ]
    )
    == 2
  )


def test_experiment_bad_inputs_name_the_problem(tmp_path, capsys):
  from experiments import tfa_lt as exp

  x, y, xt, yt = separable()
  np.savez(tmp_path / "bad.npz", train_features=x)
  wd = ["--workdir", str(tmp_path / "wd")]
  assert exp.run(["--features", str(tmp_path / "bad.npz"), *wd]) == 2
  assert (
    "missing arrays ['train_labels', 'test_features', 'test_labels']"
    in capsys.readouterr().err
  )
  assert exp.run(["--features", str(tmp_path / "nope.npz"), *wd]) == 2
  assert "no such file" in capsys.readouterr().err


def test_tfa_lt_smoke_on_odir5k_synth_under_a_minute(tmp_path, cache):
  import time

  wd = tmp_path / "tfa"
  t0 = time.perf_counter()
  out = run_cli(
    "experiments.tfa_lt", ["--preset", "smoke", "--workdir", str(wd)], cache
  )
  seconds = time.perf_counter() - t0
  assert out.returncode == 0, out.stderr[-3000:]
  assert "## Table 2 layout" in out.stdout
  assert "no text guidance" in out.stdout  # the printed table says it too
  report = (wd / "report.md").read_text()
  assert "no text guidance" in report and "synthetic" in report.lower()
  assert "Multi-label **adaptation**" in report
  res = json.loads((wd / "results.json").read_text())
  assert res["runs"][0]["multilabel"] and res["runs"][0]["split"] == "fold 0"
  # The frozen encoder's features are cached: a rerun reads them back.
  cached = list((wd / "cache" / "features").glob("*.npy"))
  assert len(cached) == 2
  print(f"experiments.tfa_lt --preset smoke: {seconds:.1f} s")
