"""TFA-LT (paper 002) on frozen features: two residual adapters trained on
resampled sets (stage I), then a linear ensembler on the original set
(stage II).

Everything runs on features ``[n, d]`` computed once by a frozen encoder
(a user's CLIP export, or an agt_jax encoder through
:mod:`agt_jax.train.feature_cache`), so a whole run is a few jitted
``lax.scan`` loops:

* stage I: adapter ``w`` on weighted-random resampling (WRS), adapter ``r``
  on random undersampling (RUS), each with Eq. 1's residual adapter and
  Eq. 2's cosine logits against the class text embeddings over ``tau``;
* stage II: adapters frozen; the feature-wise ensembler maps the two
  adapted features to one (then Eq. 2), the logit-wise one maps the two
  logit vectors to logits (Eq. 3); trained with focal loss on the original,
  long-tailed set.

SGD (momentum 0.9, weight decay 5e-4), batch 128, lr 0.1 with cosine
annealing, 200 + 100 epochs (paper §3.2). ``objective="softmax"`` is the
paper (cross-entropy / softmax focal); ``"bce"`` is this project's
multi-label adaptation (per-class sigmoid of the same similarity logits
plus a learned per-class bias; BCE in stage I, sigmoid focal in stage II).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from agt_jax.data import samplers
from agt_jax.models.adapters import (
  LinearEnsembler,
  ResidualAdapter,
  cosine_logits,
)

__all__ = [
  "TFAOptions",
  "orthonormal_embeddings",
  "run_tfa_lt",
  "softmax_focal_loss",
]


@dataclasses.dataclass(frozen=True)
class TFAOptions:
  objective: str = "softmax"  # softmax (paper) | bce (multi-label)
  tau: float = 0.01
  lr: float = 0.1
  momentum: float = 0.9
  weight_decay: float = 5e-4
  batch_size: int = 128
  stage1_epochs: int = 200
  stage2_epochs: int = 100
  focal_gamma: float = 2.0  # Lin et al.'s default; the paper cites it
  seed: int = 0

  def __post_init__(self):
    if self.objective not in ("softmax", "bce"):
      raise ValueError(
        f"objective must be softmax or bce, got " f"{self.objective!r}."
      )


def softmax_focal_loss(logits, labels, *, gamma: float = 2.0):
  r"""Per-example softmax focal loss (Lin et al. 2017) for integer labels:
  :math:`-(1 - p_y)^\gamma \log p_y`; ``gamma=0`` is cross-entropy.
  ``[N, C]`` logits, ``[N]`` labels -> ``[N]``."""
  logp = jnp.take_along_axis(
    jax.nn.log_softmax(logits), labels[:, None], axis=-1
  )[:, 0]
  if gamma == 0:  # x**0's gradient is NaN at x = 0 (a confident example)
    return -logp
  return -((-jnp.expm1(logp)) ** gamma) * logp


def orthonormal_embeddings(
  num_classes: int, dim: int, *, seed: int = 0
) -> np.ndarray:
  """``[C, d]`` fixed random orthonormal class embeddings: the stand-in for
  text embeddings when none are given ("no text guidance")."""
  if num_classes > dim:
    raise ValueError(
      f"{num_classes} orthonormal embeddings need d >= C; "
      f"the features have d = {dim}."
    )
  a = np.random.default_rng(seed).normal(size=(dim, num_classes))
  q, _ = np.linalg.qr(a)
  return q.T.astype(np.float32)


class AdapterClassifier(nn.Module):
  """Stage I: Eq. 1's adapter then Eq. 2's similarity logits (plus a
  per-class bias in the multi-label form); ``adapter=False`` is CLIP's
  zero-shot classifier (features as they are)."""

  text: jax.Array
  tau: float
  multilabel: bool
  adapter: bool = True

  @nn.compact
  def __call__(self, f):
    fv = ResidualAdapter(name="adapter")(f) if self.adapter else f
    z = cosine_logits(fv, self.text, tau=self.tau)
    if self.multilabel:
      z = z + self.param("bias", nn.initializers.zeros, (z.shape[-1],))
    return z, fv


class Ensembler(nn.Module):
  """Stage II (Eq. 3): ``feature``: K maps both adapted features to one,
  then similarity logits; ``logit``: K maps both logit vectors."""

  text: jax.Array
  tau: float
  multilabel: bool
  level: str = "feature"

  @nn.compact
  def __call__(self, fw, fr, lw, lr):
    if self.level == "feature":
      z = cosine_logits(
        LinearEnsembler(fw.shape[-1], name="ensembler")(fw, fr),
        self.text,
        tau=self.tau,
      )
      if self.multilabel:
        z = z + self.param("bias", nn.initializers.zeros, (z.shape[-1],))
      return z
    return LinearEnsembler(lw.shape[-1], name="ensembler")(lw, lr)


def _loss(logits, labels, options: TFAOptions, *, focal: bool):
  gamma = options.focal_gamma if focal else 0.0
  if options.objective == "softmax":
    return softmax_focal_loss(logits, labels, gamma=gamma).mean()
  if focal:
    return optax.sigmoid_focal_loss(
      logits, labels, alpha=None, gamma=gamma
    ).mean()
  return optax.sigmoid_binary_cross_entropy(logits, labels).mean()


def _optimizer(options: TFAOptions, total_steps: int):
  sched = optax.cosine_decay_schedule(options.lr, max(total_steps, 1))
  return optax.chain(
    optax.add_decayed_weights(options.weight_decay),
    optax.sgd(sched, momentum=options.momentum),
  )


def _train(
  apply_fn, params, inputs, labels, index, options, *, focal, log_lambda=False
):
  """SGD over the ``[steps, batch]`` index plan in one ``lax.scan``;
  returns the trained params and, per step, the loss (and σ(λ))."""
  tx = _optimizer(options, index.shape[0])

  def step(carry, idx):
    p, s = carry
    batch = [x[idx] for x in inputs]

    def loss_fn(p):
      return _loss(apply_fn(p, *batch), labels[idx], options, focal=focal)

    loss, g = jax.value_and_grad(loss_fn)(p)
    u, s = tx.update(g, s, p)
    p = optax.apply_updates(p, u)
    out = {"loss": loss}
    if log_lambda:
      out["sigma_lambda"] = jax.nn.sigmoid(p["params"]["adapter"]["lam"])
    return (p, s), out

  (params, _), logs = jax.jit(lambda c, ix: jax.lax.scan(step, c, ix))(
    (params, tx.init(params)), jnp.asarray(index)
  )
  return params, jax.device_get(logs)


def _plan(pool: np.ndarray, epochs: int, batch: int, rng, p=None) -> np.ndarray:
  """``[steps, batch]`` indices: ``epochs`` passes over ``len(pool)``
  draws (a shuffle of ``pool``, or with replacement by ``p``)."""
  steps = max(1, math.ceil(len(pool) / batch)) * epochs
  if p is not None:
    return rng.choice(pool, size=(steps, batch), p=p)
  rows = [
    rng.permutation(pool)
    for _ in range(math.ceil(steps * batch / len(pool)) + 1)
  ]
  return np.concatenate(rows)[: steps * batch].reshape(steps, batch)


def _stage1(
  classifier, train_x, labels, onehot, key, rng, options, out
) -> dict:
  """Stage I: WRS and RUS adapters, and one on the original set (the
  ablation); ``{name: (model, params)}``, with their logs put in ``out``."""
  n, b = len(onehot), options.batch_size
  w = samplers.instance_class_balanced_weights(onehot)
  pools = {
    "wrs": (np.arange(n), w / w.sum()),
    "rus": (
      samplers.random_undersample_indices(onehot, seed=options.seed),
      None,
    ),
    "plain": (np.arange(n), None),
  }
  adapters = {}
  for name, (pool, p) in pools.items():
    model = classifier()
    params = model.init(jax.random.fold_in(key, len(adapters) + 1), train_x[:1])
    index = _plan(pool, options.stage1_epochs, b, rng, p)
    params, logs = _train(
      lambda q, x: model.apply(q, x)[0],
      params,
      [train_x],
      labels,
      index,
      options,
      focal=False,
      log_lambda=True,
    )
    adapters[name] = (model, params)
    out["sigma_lambda"][name] = np.asarray(logs["sigma_lambda"]).tolist()
    out["loss"][f"stage1_{name}"] = float(np.mean(logs["loss"][-10:]))
  return adapters


def run_tfa_lt(
  train_x,
  train_y,
  test_x,
  text,
  options: TFAOptions,
  *,
  levels=("feature", "logit"),
) -> dict:
  """TFA-LT and its Table 2 ablations on frozen features.

  Args:
    train_x, test_x: ``[n, d]`` features (float32).
    train_y: ``[n]`` integer labels (``softmax``) or ``[n, C]`` multi-hot
      (``bce``).
    text: ``[C, d]`` class embeddings.
    options: :class:`TFAOptions`.
    levels: ensembler levels to train.

  Returns:
    ``{"scores": {row: [n_test, C] logits}, "sigma_lambda": {"wrs": [...],
    "rus": [...], "plain": [...]}, "loss": {...}}`` with rows ``zero_shot``
    (no adapter, no ensembler), ``adapter`` (one adapter on the original
    set), ``ensembler_<level>`` (no adapters), ``tfa_<level>`` (both).
  """
  multilabel = options.objective == "bce"
  train_x = jnp.asarray(train_x, jnp.float32)
  test_x = jnp.asarray(test_x, jnp.float32)
  text = jnp.asarray(text, jnp.float32)
  y = np.asarray(train_y)
  onehot = y if multilabel else np.eye(text.shape[0])[y]
  labels = jnp.asarray(y, jnp.float32 if multilabel else jnp.int32)
  rng = np.random.default_rng(options.seed)
  n = len(y)
  key = jax.random.key(options.seed)
  b = options.batch_size
  out = {"scores": {}, "sigma_lambda": {}, "loss": {}}

  def classifier(adapter=True):
    return AdapterClassifier(text, options.tau, multilabel, adapter)

  zs = classifier(adapter=False)
  zs_params = zs.init(key, train_x[:1])
  out["scores"]["zero_shot"] = np.asarray(zs.apply(zs_params, test_x)[0])

  adapters = _stage1(
    classifier, train_x, labels, onehot, key, rng, options, out
  )
  plain_model, plain_params = adapters["plain"]
  out["scores"]["adapter"] = np.asarray(
    plain_model.apply(plain_params, test_x)[0]
  )

  def frozen_inputs(x, use_adapters):
    if not use_adapters:
      lz, fz = zs.apply(zs_params, x)
      return fz, fz, lz, lz
    (mw, pw), (mr, pr) = adapters["wrs"], adapters["rus"]
    lw, fw = mw.apply(pw, x)
    lr, fr = mr.apply(pr, x)
    return fw, fr, lw, lr

  # Stage II: the ensembler on the original long-tailed set, focal loss.
  for use_adapters in (False, True):
    tr = frozen_inputs(train_x, use_adapters)
    te = frozen_inputs(test_x, use_adapters)
    for level in levels:
      ens = Ensembler(text, options.tau, multilabel, level)
      params = ens.init(jax.random.fold_in(key, 100), *[a[:1] for a in tr])
      index = _plan(np.arange(n), options.stage2_epochs, b, rng)
      params, logs = _train(
        ens.apply, params, list(tr), labels, index, options, focal=True
      )
      row = f"{'tfa' if use_adapters else 'ensembler'}_{level}"
      out["scores"][row] = np.asarray(ens.apply(params, *te))
      out["loss"][f"stage2_{row}"] = float(np.mean(logs["loss"][-10:]))
  return out
