"""The class groups of a run, and the encoder features or gradients they are
computed from (paper §3.3 relational subsets; GBG gradient groups)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from agt_jax import grouping as grouping_lib
from agt_jax import models
from agt_jax.data import images as images_lib
from agt_jax.data import samplers
from agt_jax.train import evaluation, steps
from agt_jax.train.phase import TrainingPhase


def make_groups(config, encoder, train_source, y_train, names, counts, mesh,
                image_shape, workdir, throughput, load_init) -> dict:
  """Chooses the class groups; relational/gradient groupings read features
  or gradients of an encoder trained briefly with plain BCE (or given by
  ``--init``). Returns the ``groups.json`` record."""
  strategy = config.grouping
  info: dict[str, Any] = {"strategy": strategy}
  if strategy not in ("relational", "gradient"):
    info["features"] = "not used"
    return _finish(info, _fixed_groups(config, names, counts), names)

  student = models.Student(encoder, num_classes=len(names))
  tx = steps.adam(config.lr, config.b1, config.b2)
  state = steps.init_state(student, tx, image_shape, config.seed + 2)
  if config.init:
    state = load_init(config.init, state)
    info["features"] = f"--init {config.init}"
  elif config.warmup_steps:
    def warm_fn(s, b):
      return steps.plain_step(s, b, model=student, tx=tx)
    phase = TrainingPhase(
        "warmup", step_fn=warm_fn, state=state,
        batches=samplers.instance_balanced_batches(
            y_train, batch_size=config.batch_size, seed=config.seed + 2),
        source=train_source, config=config, workdir=workdir, mesh=mesh,
        total_steps=config.warmup_steps, resume=False, save=False)
    # A warm-up is short and deterministic: after a crash it is rerun.
    throughput["warmup"] = phase.run()
    state = phase.state
    info["features"] = (f"warm-up: {config.warmup_steps} steps of plain BCE "
                        "from random initialisation (no pretrained weights "
                        "given)")
  else:
    info["features"] = "random initialisation (no warm-up, no --init)"
  variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
  if strategy == "gradient":
    grads = class_gradients(student, variables, train_source, y_train, config)
    groups = grouping_lib.gradient_groups(grads, n_groups=config.n_groups,
                                          seed=config.seed)
    return _finish(info, groups, names)

  idx = np.arange(len(y_train))
  _, feats = evaluation.predict(student, variables, train_source, idx,
                                y_train, config, mesh,
                                "features for grouping")
  groups = grouping_lib.relational_groups(
      feats, y_train, n_groups=config.n_groups, together=config.together,
      class_names=names, seed=config.seed)
  stab = grouping_lib.grouping_stability(
      feats, y_train, n_groups=config.n_groups, together=config.together,
      class_names=names, seeds=range(10))
  info["pca"] = {"fitted_on": f"{len(idx)} training images x "
                              f"{feats.shape[1]} features",
                 "variance": 0.95, "n_components": stab["n_components"],
                 "explained_variance": stab["explained_variance"],
                 "class_representation": "centroid of each class's positive "
                                         "images in PCA space"}
  info["stability"] = {
      "mean_ari": stab["mean_ari"], "min_ari": stab["min_ari"],
      "pca_sizes": sorted({r["pca"] for r in stab["runs"]}),
      "seeds": 10,
      "ari_by_pca": {str(n): float(np.mean([r["ari"] for r in stab["runs"]
                                             if r["pca"] == n]))
                     for n in sorted({r["pca"] for r in stab["runs"]})},
      "note": "ARI of every (PCA size, K-Means seed) grouping against the "
              "95%-variance grouping; PCA sizes are capped by the number of "
              "images and the feature size"}
  return _finish(info, groups, names)


def check_grouping(config, names, counts) -> None:
  """What can be checked of the grouping before any compute: a fixed
  grouping is built and must partition the classes; ``together`` must name
  known classes. Raises :class:`~agt_jax.errors.InputError`."""
  if config.grouping == "relational":
    grouping_lib.check_together(len(names), config.together, names,
                                config.n_groups)
  elif config.grouping != "gradient":
    samplers.validate_groups(_fixed_groups(config, names, counts),
                             len(names), names)


def _fixed_groups(config, names, counts):
  return grouping_lib.make_groups(
      config.grouping, num_classes=len(names), class_names=names,
      class_counts=counts, n_groups=config.n_groups,
      together=config.together, seed=config.seed,
      many=config.shot_many or None, few=config.shot_few or None)


def _finish(info, groups, names) -> dict:
  samplers.validate_groups(groups, len(names), names)
  info["groups"] = [list(map(int, g)) for g in groups]
  info["names"] = [[names[c] for c in g] for g in groups]
  return info


def class_gradients(model, variables, source, labels, config,
                    batches: int = 4) -> np.ndarray:
  """Per-class mean encoder gradient of the BCE of that class's positives
  (GBG), over a few centre-cropped batches."""
  import optax
  # A host copy: every process computes the same small gradients locally.
  variables = jax.device_get(variables)

  def class_loss(enc_params, images, y, c):
    params = {**variables["params"], "encoder": enc_params}
    (logits, _) = model.apply({"params": params,
                               "batch_stats": variables["batch_stats"]},
                              images, train=False)
    per = optax.sigmoid_binary_cross_entropy(logits, y)[:, c]
    mask = y[:, c]
    return (per * mask).sum() / jnp.maximum(mask.sum(), 1.0)

  grad_fn = jax.jit(jax.grad(class_loss), static_argnums=3)
  c = labels.shape[1]
  rng = np.random.default_rng(config.seed)
  acc = None
  for _ in range(batches):
    idx = rng.choice(len(labels), size=min(config.batch_size, len(labels)),
                     replace=False)
    x = np.stack([images_lib.center_crop(source[i], config.crop) for i in idx])
    y = jnp.asarray(labels[idx], jnp.float32)
    rows = []
    for k in range(c):
      g = grad_fn(variables["params"]["encoder"], x, y, k)
      rows.append(np.concatenate([np.ravel(v) for v in jax.tree.leaves(g)]))
    rows = np.stack(rows)
    acc = rows if acc is None else acc + rows
  return acc / batches
