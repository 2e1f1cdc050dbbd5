"""The class groups of a run, and the encoder features or gradients they are
computed from (paper §3.3 relational subsets; GBG gradient groups)."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from agt_jax import grouping as grouping_lib
from agt_jax import methods, models
from agt_jax.data import images as images_lib
from agt_jax.data import samplers
from agt_jax.train import evaluation, steps
from agt_jax.train.phase import TrainingPhase


def make_groups(
  config,
  encoder,
  train_source,
  y_train,
  names,
  counts,
  mesh,
  image_shape,
  workdir,
  throughput,
  load_init,
) -> dict:
  """Chooses the class groups; relational/gradient groupings read features
  or gradients of an encoder trained briefly with plain BCE (or given by
  ``--init``). Returns the ``groups.json`` record."""
  strategy = config.grouping
  info: dict[str, Any] = {"strategy": strategy}
  if strategy not in ("relational", "gradient"):
    info["features"] = "not used"
    return _finish(info, _fixed_groups(config, names, counts), names)
  student, variables = _grouping_encoder(
    config, encoder, train_source, y_train, names, mesh, image_shape,
    workdir, throughput, load_init, info,
  )  # fmt: skip
  fn = _gradient_grouping if strategy == "gradient" else _relational_grouping
  return fn(config, student, variables, train_source, y_train, names, mesh,
            info)  # fmt: skip


def _grouping_encoder(
  config,
  encoder,
  train_source,
  y_train,
  names,
  mesh,
  image_shape,
  workdir,
  throughput,
  load_init,
  info,
):
  """``(model, variables)`` whose features group the classes: ``--init``
  weights, a short plain-BCE warm-up, or random ones (said in ``info``)."""
  student = models.Student(encoder, num_classes=len(names))
  tx = steps.adam(config.lr, config.b1, config.b2)
  state = steps.init_state(student, tx, image_shape, config.seed + 2)
  source = config.group_init or config.init
  if source:
    state = load_init(source, state)
    info["features"] = (
      f"group_init {source}" if config.group_init else f"--init {source}"
    )
  elif config.warmup_steps:
    phase = TrainingPhase(
      "warmup",
      step_fn=functools.partial(steps.plain_step, model=student, tx=tx),
      state=state,
      batches=samplers.instance_balanced_batches(
        y_train, batch_size=config.batch_size, seed=config.seed + 2
      ),
      source=train_source,
      config=config,
      workdir=workdir,
      mesh=mesh,
      total_steps=config.warmup_steps,
      resume=False,
      save=False,
    )
    # A warm-up is short and deterministic: after a crash it is rerun.
    throughput["warmup"] = phase.run()
    state = phase.state
    info["features"] = (
      f"warm-up: {config.warmup_steps} steps of plain BCE "
      "from random initialisation (no pretrained weights "
      "given)"
    )
  else:
    info["features"] = "random initialisation (no warm-up, no --init)"
  return student, {
    "params": state["params"],
    "batch_stats": state["batch_stats"],
  }


def _gradient_grouping(
  config, student, variables, train_source, y_train, names, mesh, info
) -> dict:
  """GBG's grouping: class-gradient affinities, clustered."""
  grads = class_gradients(
    student,
    variables,
    train_source,
    y_train,
    config,
    batches=config.grad_batches,
    objective=methods.objective(config),
  )
  groups = grouping_lib.gradient_groups(
    grads,
    n_groups=config.n_groups,
    seed=config.seed,
    affinity=config.affinity,
  )
  info["affinity"] = config.affinity
  info["class_gradients"] = (
    f"{config.grad_batches} batches of "
    f"{config.batch_size}, "
    f"{methods.objective(config)} loss"
  )
  return _finish(info, groups, names)


def _relational_grouping(
  config, student, variables, train_source, y_train, names, mesh, info
) -> dict:
  """The paper's grouping: PCA of image features, K-Means of the classes,
  and its stability over PCA sizes and seeds."""
  idx = np.arange(len(y_train))
  _, feats = evaluation.predict(
    student,
    variables,
    train_source,
    idx,
    y_train,
    config,
    mesh,
    "features for grouping",
  )
  groups = grouping_lib.relational_groups(
    feats,
    y_train,
    n_groups=config.n_groups,
    together=_together(config, names),
    class_names=names,
    seed=config.seed,
  )
  stab = grouping_lib.grouping_stability(
    feats,
    y_train,
    n_groups=config.n_groups,
    together=_together(config, names),
    class_names=names,
    seeds=range(10),
  )
  info["pca"] = {
    "fitted_on": f"{len(idx)} training images x " f"{feats.shape[1]} features",
    "variance": 0.95,
    "n_components": stab["n_components"],
    "explained_variance": stab["explained_variance"],
    "class_representation": "centroid of each class's positive "
    "images in PCA space",
  }
  info["stability"] = {
    "mean_ari": stab["mean_ari"],
    "min_ari": stab["min_ari"],
    "pca_sizes": sorted({r["pca"] for r in stab["runs"]}),
    "seeds": 10,
    "ari_by_pca": {
      str(n): float(np.mean([r["ari"] for r in stab["runs"] if r["pca"] == n]))
      for n in sorted({r["pca"] for r in stab["runs"]})
    },
    "note": "ARI of every (PCA size, K-Means seed) grouping against the "
    "95%-variance grouping; PCA sizes are capped by the number of "
    "images and the feature size",
  }
  return _finish(info, groups, names)


def check_grouping(config, names, counts) -> None:
  """What can be checked of the grouping before any compute: a fixed
  grouping is built and must partition the classes; ``together`` must name
  known classes. Raises :class:`~agt_jax.errors.InputError`."""
  if config.grouping == "relational":
    grouping_lib.check_together(
      len(names), _together(config, names), names, config.n_groups
    )
  elif config.grouping != "gradient":
    samplers.validate_groups(
      _fixed_groups(config, names, counts), len(names), names
    )


def _together(config, names):
  """``config.together``; on a class subset (``classes``), the pairs whose
  classes were all kept (the default N/O pair is meaningless on D, G, A)."""
  if not config.classes:
    return config.together
  return tuple(p for p in config.together if all(c in names for c in p))


def _fixed_groups(config, names, counts):
  return grouping_lib.make_groups(
    config.grouping,
    num_classes=len(names),
    class_names=names,
    class_counts=counts,
    n_groups=config.n_groups,
    together=_together(config, names),
    seed=config.seed,
    many=config.shot_many or None,
    few=config.shot_few or None,
  )


def _finish(info, groups, names) -> dict:
  samplers.validate_groups(groups, len(names), names)
  info["groups"] = [list(map(int, g)) for g in groups]
  info["names"] = [[names[c] for c in g] for g in groups]
  return info


def class_gradients(
  model,
  variables,
  source,
  labels,
  config,
  batches: int = 4,
  objective: str = "bce",
) -> np.ndarray:
  """Per-class mean encoder gradient (GBG, paper 004 Algorithm 1), over
  ``batches`` centre-cropped batches, in eval mode.

  ``bce``: the gradient of class ``c``'s BCE over its positive images;
  ``softmax``: of the cross-entropy over class ``c``'s images. Returns
  ``[C, P]``.
  """
  import optax

  # A host copy: every process computes the same small gradients locally.
  variables = jax.device_get(variables)
  c = labels.shape[1]

  def class_losses(enc_params, images, y):
    params = {**variables["params"], "encoder": enc_params}
    (logits, _) = model.apply(
      {"params": params, "batch_stats": variables["batch_stats"]},
      images,
      train=False,
    )
    if objective == "softmax":
      per = (
        optax.softmax_cross_entropy_with_integer_labels(
          logits, jnp.argmax(y, -1)
        )[:, None]
        * y
      )
    else:
      per = optax.sigmoid_binary_cross_entropy(logits, y) * y
    return per.sum(0) / jnp.maximum(y.sum(0), 1.0)  # [C]

  jac_fn = jax.jit(jax.jacrev(class_losses))
  rng = np.random.default_rng(config.seed)
  acc = np.zeros((c, 1))
  for _ in range(batches):
    idx = rng.choice(
      len(labels), size=min(config.batch_size, len(labels)), replace=False
    )
    x = np.stack([images_lib.center_crop(source[i], config.crop) for i in idx])
    y = jnp.asarray(labels[idx], jnp.float32)
    jac = jac_fn(variables["params"]["encoder"], x, y)
    rows = np.concatenate(
      [np.asarray(v).reshape(c, -1) for v in jax.tree.leaves(jac)], axis=1
    )
    acc = rows + acc
  return acc / batches
