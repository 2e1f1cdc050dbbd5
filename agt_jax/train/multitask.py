"""Multi-task pretraining on FGADR (paper §3.8, following RLKD): lesion
segmentation and DR grading trained jointly on one encoder, written as a
checkpoint that ``--init`` (and ``group_init``) read.

The batches carry image and masks stacked as one ``[b, crop, crop, 3 + L]``
uint8 array (:class:`agt_jax.data.fgadr.StackedSource`), so the pipeline's
random crop and flip move both alike. The loss per batch:

.. math::
  \\frac1L \\sum_l \\Big[\\overline{\\mathrm{BCE}}(s_l, m_l)
    + 1 - \\frac{2 \\sum \\sigma(s_l) m_l + 1}{\\sum \\sigma(s_l) + \\sum m_l + 1}
  \\Big] + \\mathrm{CE}(g, \\mathrm{grade})

(pixel-mean BCE plus soft Dice per lesion, over the global batch, and the
grade's softmax cross-entropy). The soft Dice keeps the rare lesion pixels
from being drowned by the background.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax

from agt_jax.train.steps import State, _norm, apply_updates


def split_batch(image):
  """``(uint8 images [N, H, W, 3], float masks [N, H, W, L])`` of a stacked
  batch."""
  return image[..., :3], (image[..., 3:] > 127).astype(jnp.float32)


def multitask_loss(seg_logits, grade_logits, masks, grades):
  """``(loss, {"seg_bce", "seg_dice", "grade_ce"})`` (module docstring)."""
  bce = optax.sigmoid_binary_cross_entropy(seg_logits, masks).mean((0, 1, 2))
  p = jax.nn.sigmoid(seg_logits)
  inter = jnp.sum(p * masks, (0, 1, 2))
  dice = (2 * inter + 1.0) / (p.sum((0, 1, 2)) + masks.sum((0, 1, 2)) + 1.0)
  ce = optax.softmax_cross_entropy_with_integer_labels(
    grade_logits, grades
  ).mean()
  parts = {
    "seg_bce": bce.mean(),
    "seg_dice": dice.mean(),
    "grade_ce": ce,
  }
  return bce.mean() + (1.0 - dice).mean() + ce, parts


def multitask_step(
  state: State, batch: dict, *, model, tx
) -> tuple[State, dict]:
  """One joint update of the encoder, the lesion decoder and the grade
  head. ``batch["labels"]`` are one-hot grades `[N, 5]`."""
  images, masks = split_batch(batch["image"])
  grades = jnp.argmax(batch["labels"], -1)

  def loss_fn(params):
    (seg, grade), updates = model.apply(
      {"params": params, "batch_stats": state["batch_stats"]},
      images,
      train=True,
      mutable=["batch_stats"],
    )
    loss, parts = multitask_loss(seg, grade, masks, grades)
    return loss, (parts, updates)

  (loss, (parts, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
    state["params"]
  )
  new_state, _ = apply_updates(state, grads, updates["batch_stats"], tx=tx)
  return new_state, {
    "loss": loss,
    **parts,
    "grad_norm": _norm(grads),
    "param_norm": _norm(new_state["params"]),
  }


def predict(model, variables, stacked, *, batch_size: int = 64):
  """``(seg probabilities [n, H, W, L], grade probabilities [n, G])`` of
  stacked uint8 arrays (masks ignored), in eval mode."""

  @jax.jit
  def fwd(x):
    seg, grade = model.apply(variables, x[..., :3], train=False)
    return jax.nn.sigmoid(seg), jax.nn.softmax(grade)

  segs, grades = [], []
  for i in range(0, len(stacked), batch_size):
    s, g = fwd(jnp.asarray(stacked[i : i + batch_size]))
    segs.append(np.asarray(s))
    grades.append(np.asarray(g))
  return np.concatenate(segs), np.concatenate(grades)


def dice_scores(pred, masks, lesions) -> dict:
  """Pooled Dice ``2|P ∩ G| / (|P| + |G|)`` per lesion over all images
  (``pred``, ``masks`` bool `[n, H, W, L]`); NaN where a lesion is absent
  from both."""
  out = {}
  for j, name in enumerate(lesions):
    p, g = pred[..., j], masks[..., j]
    denom = int(p.sum() + g.sum())
    out[name] = 2.0 * int((p & g).sum()) / denom if denom else float("nan")
  return out


def evaluate(model, variables, stacked, grades, lesions) -> dict:
  """Dice per lesion (at 0.5) and the grade's quadratic-weighted kappa and
  accuracy on held-out images."""
  from sklearn.metrics import cohen_kappa_score

  seg, gp = predict(model, variables, stacked)
  masks = stacked[..., 3:] > 127
  dice = dice_scores(seg > 0.5, masks, lesions)
  pred = gp.argmax(-1)
  finite = [v for v in dice.values() if np.isfinite(v)]
  return {
    "dice": dice,
    "mean_dice": float(np.mean(finite)) if finite else float("nan"),
    "grade_kappa": float(
      cohen_kappa_score(grades, pred, weights="quadratic", labels=range(5))
    ),
    "grade_accuracy": float((pred == grades).mean()),
    "images": int(len(grades)),
    "lesion_pixel_share": {
      name: float(masks[..., j].mean()) for j, name in enumerate(lesions)
    },
  }


@dataclasses.dataclass(frozen=True)
class Split:
  fit: np.ndarray
  test: np.ndarray


def split(n: int, *, fraction: float = 0.2, seed: int = 0) -> Split:
  """A seeded hold-out of ``fraction`` of the images (FGADR has one image
  per eye and no patient ids in its release; its images are scored once)."""
  perm = np.random.default_rng([seed, 17]).permutation(n)
  k = max(1, int(round(fraction * n)))
  return Split(np.sort(perm[k:]), np.sort(perm[:k]))


def train(config, table, images, masks, workdir, *, resume: bool) -> dict:
  """Trains the multi-task network for ``config.teacher_steps`` steps on
  the fit images (checkpointed and resumable as every phase), scores the
  held-out ones and writes ``results.json``. The phase's checkpoint folder
  ``checkpoints/multitask`` is the ``--init``."""
  from agt_jax import models
  from agt_jax.data import fgadr, samplers
  from agt_jax.data.images import center_crop
  from agt_jax.runtime import make_mesh
  from agt_jax.train import steps
  from agt_jax.train.phase import TrainingPhase

  workdir = pathlib.Path(workdir)
  parts = split(len(table), seed=config.fold_seed)
  encoder = models.make_encoder(
    config.model, dtype=models.DTYPES[config.dtype], pool=False
  )
  model = models.LesionGradeNet(encoder, num_lesions=len(fgadr.LESIONS))
  tx = steps.adam(config.lr, config.b1, config.b2, config.weight_decay)
  state = steps.init_state(
    model, tx, (config.crop, config.crop, 3), config.seed
  )
  mesh = make_mesh(config.batch_size)
  labels = table.grade_onehot

  phase = TrainingPhase(
    "multitask",
    step_fn=functools.partial(multitask_step, model=model, tx=tx),
    state=state,
    batches=samplers.instance_balanced_batches(
      labels[parts.fit], batch_size=config.batch_size, seed=config.seed
    ),
    source=fgadr.StackedSource(images, masks, parts.fit),
    config=config,
    workdir=workdir,
    mesh=mesh,
    total_steps=config.teacher_steps,
    resume=resume,
  )
  throughput = phase.run()
  variables = jax.device_get(phase.variables())
  held = fgadr.StackedSource(images, masks, parts.test)
  stacked = np.stack(
    [center_crop(held[i], config.crop) for i in range(len(held))]
  )
  scores = evaluate(
    model, variables, stacked, table.grades[parts.test], fgadr.LESIONS
  )
  results = {
    "dataset": table.name,
    "synthetic": bool(table.meta.get("synthetic")),
    "note": table.meta.get("note", ""),
    "model": config.model,
    "steps": config.teacher_steps,
    "fit_images": int(len(parts.fit)),
    "test": scores,
    "grades_fit": np.bincount(table.grades[parts.fit], minlength=5).tolist(),
    "init": str(workdir / "checkpoints" / "multitask"),
    "throughput": throughput,
  }
  from agt_jax.io import atomic_write_text

  atomic_write_text(workdir / "results.json", json.dumps(results, indent=1))
  return results
