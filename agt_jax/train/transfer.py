"""The transfer-study trainer (paper 001): one
:class:`~agt_jax.models.TransferNet` on every class, a frozen encoder
(Task 1.2) or all layers (Tasks 1.3-4)."""

from __future__ import annotations

import functools

from agt_jax import models
from agt_jax.data import samplers
from agt_jax.models import weights
from agt_jax.train import steps
from agt_jax.train.fit import Trained, run_phase


def transfer_model(config, num_classes: int) -> models.TransferNet:
  """The :class:`~agt_jax.models.TransferNet` of ``config``: a CNN gives
  its last map; ViT its class token unless attention or Grad-CAM needs
  the patch-token map."""
  vit = config.model.startswith("vit")
  spatial = not vit or config.attention != "none" or config.cam_entropy != 0
  encoder = models.make_encoder(
    config.model, dtype=models.DTYPES[config.dtype], pool=not spatial
  )
  return models.TransferNet(
    encoder,
    num_classes=num_classes,
    attention=config.attention,
    head=config.head,
    hidden=config.head_hidden,
    dropout=config.dropout,
    freeze_encoder=config.freeze_encoder,
  )


def model(config, phase: str, groups, num_classes: int):
  return transfer_model(config, num_classes)


def load_init(path: str, state: dict) -> dict:
  """A checkpoint of the same model (Task 1.3 starts from Task 1.2's
  selected variables): all of it; otherwise its encoder (``.pth``, a
  teacher, a model with another head)."""
  restored = weights.load_variables(path, state)
  if restored is None:
    return weights.load_init(path, state)
  return {**state, **restored}


def train(config, data, groups, ctx) -> dict[str, Trained]:
  """Paper 001: one TransferNet on every class; a frozen encoder
  (Task 1.2) or all layers (Tasks 1.3-4), BCE / focal / positive-only CB,
  optional SE / MHA and the Grad-CAM entropy term."""
  model = transfer_model(config, len(data.names))
  tx = steps.adam(config.lr, config.b1, config.b2, config.weight_decay)
  if config.freeze_encoder:
    tx = steps.frozen_encoder_tx(tx)
  state = steps.init_state(
    model, tx, (config.crop, config.crop, 3), config.seed
  )
  if config.init:
    state = load_init(config.init, state)
    state["opt_state"] = tx.init(state["params"])
  options = steps.TransferOptions(
    loss=config.transfer_loss,
    focal_alpha=config.focal_alpha,
    focal_gamma=config.focal_gamma,
    cb_beta=config.cb_beta,
    class_counts=tuple(int(x) for x in data.counts),
    cam_entropy=config.cam_entropy,
    seed=config.seed,
  )

  trained = run_phase(
    "transfer",
    model=model,
    step_fn=functools.partial(
      steps.transfer_step, model=model, tx=tx, options=options
    ),
    state=state,
    batches=samplers.instance_balanced_batches(
      data.y_fit, batch_size=config.batch_size, seed=config.seed
    ),
    config=config,
    data=data,
    mesh=ctx.mesh,
    workdir=ctx.workdir,
    resume=ctx.resume,
    total_steps=config.teacher_steps,
  )
  trained.selection["schedule"] = (
    f"transfer ({'frozen encoder' if config.freeze_encoder else 'all layers'}"
    f", {config.transfer_loss}, attention {config.attention})"
  )
  return {"transfer": trained}
