"""How learnable is odir5k-synth, class by class? (SYNTHETIC data)

On one patient-level fold of odir5k-synth:

1. a logistic regression on global colour and blur statistics (what a
   shortcut would see; it should stay well below the CNN);
2. a small CNN trained from scratch for a few minutes (at 128-224 px).

Prints one JSON line per model with per-class and macro ROC AUC on the test
fold, plus the run's settings. Measurements, not assertions.

  python benchmarks/synth_learnability.py --size 128 --minutes 4
  python benchmarks/synth_learnability.py --smoke      # tiny, for tests
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import numpy as np


def colour_blur_features(images: np.ndarray) -> np.ndarray:
  """Per image: channel means/stds/percentiles inside the FOV, brightness
  histogram, and blur measures (gradient energy, Laplacian variance)."""
  feats = []
  for img in images:
    x = img.astype(np.float32) / 255
    fov = x.max(-1) > 0.04
    px = x[fov]
    g = x.mean(-1)
    gy, gx = np.diff(g, axis=0)[:, :-1], np.diff(g, axis=1)[:-1]
    grad = np.sqrt(gx**2 + gy**2)[fov[:-1, :-1]]
    lap = (
      g[1:-1, 1:-1] * 4
      - g[:-2, 1:-1]
      - g[2:, 1:-1]
      - g[1:-1, :-2]
      - g[1:-1, 2:]
    )[fov[1:-1, 1:-1]]
    hist = np.histogram(px.mean(-1), bins=8, range=(0, 1))[0] / len(px)
    feats.append(
      np.concatenate(
        [
          px.mean(0),
          px.std(0),
          np.percentile(px, [5, 50, 95], axis=0).ravel(),
          hist,
          [grad.mean(), grad.std(), lap.var(), fov.mean()],
        ]
      )
    )
  return np.asarray(feats)


def per_class_auc(labels, scores, names):
  from sklearn.metrics import roc_auc_score

  out = {}
  for j, n in enumerate(names):
    y = labels[:, j]
    out[n] = (
      float(roc_auc_score(y, scores[:, j]))
      if 0 < y.sum() < len(y)
      else float("nan")
    )
  vals = [v for v in out.values() if v == v]
  return out, float(np.mean(vals))


def logistic_regression(x_tr, y_tr, x_te, names):
  from sklearn.linear_model import LogisticRegression
  from sklearn.preprocessing import StandardScaler

  sc = StandardScaler().fit(x_tr)
  scores = np.zeros((len(x_te), y_tr.shape[1]))
  for j in range(y_tr.shape[1]):
    clf = LogisticRegression(max_iter=2000, class_weight="balanced")
    clf.fit(sc.transform(x_tr), y_tr[:, j])
    scores[:, j] = clf.predict_proba(sc.transform(x_te))[:, 1]
  return scores


def train_small_cnn(
  x_tr,
  y_tr,
  x_te,
  *,
  minutes: float,
  batch_size: int,
  seed: int,
  max_steps: int | None = None,
):
  import jax
  import jax.numpy as jnp
  import optax
  from flax import linen as nn

  class SmallCNN(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x, train: bool):
      x = x.astype(jnp.float32) / 127.5 - 1.0
      for width in (32, 64, 128, 192, 256):
        x = nn.Conv(width, (3, 3), use_bias=False)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        x = nn.relu(x)
        x = nn.Conv(width, (3, 3), use_bias=False)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        x = nn.relu(x)
        x = nn.max_pool(x, (2, 2), (2, 2))
      x = jnp.concatenate([x.mean((1, 2)), x.max((1, 2))], -1)
      return nn.Dense(self.num_classes)(x)

  model = SmallCNN(y_tr.shape[1])
  variables = model.init(
    jax.random.key(seed), jnp.zeros((1,) + x_tr.shape[1:], jnp.uint8), False
  )
  tx = optax.adamw(optax.cosine_decay_schedule(2e-3, 20_000), weight_decay=1e-4)
  state = {
    "params": variables["params"],
    "batch_stats": variables["batch_stats"],
    "opt": tx.init(variables["params"]),
  }

  @functools.partial(jax.jit, donate_argnums=0)
  def step(state, x, y):
    def loss_fn(p):
      logits, upd = model.apply(
        {"params": p, "batch_stats": state["batch_stats"]},
        x,
        True,
        mutable=["batch_stats"],
      )
      return optax.sigmoid_binary_cross_entropy(logits, y).mean(), upd

    (loss, upd), g = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    u, opt = tx.update(g, state["opt"], state["params"])
    return {
      "params": optax.apply_updates(state["params"], u),
      "batch_stats": upd["batch_stats"],
      "opt": opt,
    }, loss

  @jax.jit
  def predict(state, x):
    return jax.nn.sigmoid(
      model.apply(
        {"params": state["params"], "batch_stats": state["batch_stats"]},
        x,
        False,
      )
    )

  rng = np.random.default_rng(seed)
  t_end = time.perf_counter() + 60 * minutes
  steps = 0
  while time.perf_counter() < t_end and (
    max_steps is None or steps < max_steps
  ):
    idx = rng.integers(len(x_tr), size=batch_size)
    x = x_tr[idx]
    flip = rng.random(batch_size) < 0.5
    x = np.where(flip[:, None, None, None], x[:, :, ::-1], x)
    state, loss = step(
      state, jnp.asarray(x), jnp.asarray(y_tr[idx], jnp.float32)
    )
    steps += 1
  jax.block_until_ready(loss)
  probs = np.concatenate(
    [
      np.asarray(predict(state, jnp.asarray(x_te[i : i + 256])))
      for i in range(0, len(x_te), 256)
    ]
  )
  return probs, steps


def main(argv=None) -> None:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawTextHelpFormatter
  )
  p.add_argument("--size", type=int, default=128)
  p.add_argument("--fold", type=int, default=0)
  p.add_argument("--minutes", type=float, default=4.0)
  p.add_argument("--batch-size", type=int, default=64)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--workers", type=int, default=None)
  p.add_argument("--cache-dir", default=None)
  p.add_argument(
    "--limit",
    type=int,
    default=None,
    help="use only the first N images (smoke runs)",
  )
  p.add_argument(
    "--smoke",
    action="store_true",
    help="tiny run: 64 px, 160 images, 5 CNN steps",
  )
  a = p.parse_args(argv)
  max_steps = None
  if a.smoke:
    a.size, a.limit, a.minutes, max_steps = 64, 160, 1.0, 5

  from agt_jax.data import folds, synth

  table = synth.synth_table()
  if a.limit:
    table = table.take(np.arange(a.limit))
  t0 = time.perf_counter()
  synth.build_cache(
    table,
    a.cache_dir,
    size=a.size,
    seed=a.seed,
    workers=a.workers,
    progress=not a.smoke,
  )
  images = np.asarray(
    synth.open_cache(table, a.cache_dir, size=a.size, seed=a.seed)
  )
  render_s = time.perf_counter() - t0
  f = folds.patient_folds(table, seed=0)
  tr, te = f != a.fold, f == a.fold
  names = table.class_names
  common = {
    "dataset": synth.NAME,
    "synthetic": True,
    "size": a.size,
    "fold": a.fold,
    "train_images": int(tr.sum()),
    "test_images": int(te.sum()),
    "cache_seconds": render_s,
  }

  t0 = time.perf_counter()
  feats = colour_blur_features(images)
  scores = logistic_regression(feats[tr], table.labels[tr], feats[te], names)
  auc, macro = per_class_auc(table.labels[te], scores, names)
  print(
    json.dumps(
      {
        "model": "logreg_colour_blur",
        "per_class_auc": auc,
        "macro_auc": macro,
        "seconds": time.perf_counter() - t0,
        **common,
      }
    ),
    flush=True,
  )

  t0 = time.perf_counter()
  probs, steps = train_small_cnn(
    images[tr],
    table.labels[tr],
    images[te],
    minutes=a.minutes,
    batch_size=a.batch_size,
    seed=a.seed,
    max_steps=max_steps,
  )
  auc, macro = per_class_auc(table.labels[te], probs, names)
  import jax

  print(
    json.dumps(
      {
        "model": "small_cnn",
        "per_class_auc": auc,
        "macro_auc": macro,
        "steps": steps,
        "seconds": time.perf_counter() - t0,
        "device": str(jax.devices()[0]),
        **common,
      }
    ),
    flush=True,
  )


if __name__ == "__main__":
  main()
