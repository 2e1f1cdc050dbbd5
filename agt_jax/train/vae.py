"""Training the label-conditional VAE (paper 001, Task 4a) on a split's
images: one jitted step ``(state, batch) -> (state, metrics)``, Adam,
minibatches drawn with a seeded permutation per epoch."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from agt_jax.models.vae import ConditionalVAE, elbo_loss


@functools.partial(jax.jit, static_argnames=("model", "tx"), donate_argnums=0)
def vae_step(state, batch, *, model, tx):
  """One Adam step on the mean negative ELBO of ``batch``
  (``{"image", "label"}``); ``state = (params, opt_state, key)``."""
  params, opt_state, key = state
  key, draw = jax.random.split(key)

  def loss_fn(p):
    logits, mu, logvar = model.apply(
      {"params": p}, batch["image"], batch["label"], rngs={"sample": draw}
    )
    return elbo_loss(logits, batch["image"], mu, logvar).mean()

  loss, grads = jax.value_and_grad(loss_fn)(params)
  updates, opt_state = tx.update(grads, opt_state, params)
  return (optax.apply_updates(params, updates), opt_state, key), {"elbo": loss}


def _rows(images, rows) -> np.ndarray:
  """``images[rows]`` of an array or of a random-access source."""
  if isinstance(images, np.ndarray):
    return images[rows]
  return np.stack([np.asarray(images[int(i)]) for i in rows])


def train_vae(
  images,
  labels,
  *,
  steps: int = 1000,
  batch_size: int = 32,
  lr: float = 1e-3,
  latent: int = 32,
  seed: int = 0,
  progress: bool = False,
):
  """``(model, params, losses)``: the VAE fitted to uint8 ``images``
  ``[n, S, S, 3]`` (an array, or a random-access source such as a fold's
  ``fit_source``, read one minibatch at a time so a split never has to fit
  in memory) with multi-hot ``labels`` ``[n, C]``; ``losses`` is the
  negative ELBO (nats per image) of every step."""
  from agt_jax.runtime import progress as bar_of

  labels = np.asarray(labels, np.float32)
  if len(images) != len(labels):
    raise ValueError(f"{len(images)} images but {len(labels)} label rows.")
  first = _rows(images, np.arange(1))
  model = ConditionalVAE(first.shape[1], labels.shape[1], latent=latent)
  key = jax.random.key(seed)
  init_key, sample_key, key = jax.random.split(key, 3)
  params = model.init(
    {"params": init_key, "sample": sample_key}, first, labels[:1]
  )["params"]
  tx = optax.adam(lr)
  state = (params, tx.init(params), key)
  rng = np.random.default_rng(seed)
  order, at = rng.permutation(len(images)), 0
  losses = []
  bar = bar_of(steps, 0, "vae") if progress else None
  b = min(batch_size, len(images))
  for _ in range(steps):
    if at + b > len(order):
      order, at = rng.permutation(len(images)), 0
    rows = order[at : at + b]
    at += b
    batch = {
      "image": jnp.asarray(_rows(images, rows)),
      "label": jnp.asarray(labels[rows]),
    }
    state, m = vae_step(state, batch, model=model, tx=tx)
    losses.append(m["elbo"])
    if bar is not None:
      bar.update(1)
  if bar is not None:
    bar.close()
  return model, state[0], np.asarray(jax.device_get(losses), np.float64)


def generate_balanced(
  images,
  labels,
  *,
  steps: int,
  seed: int = 0,
  batch_size: int = 32,
  latent: int = 32,
  progress: bool = False,
) -> dict:
  """Paper 001's Task 4a: fits the VAE to a split's ``images`` (an array
  or a random-access source, as :func:`train_vae`) and ``labels``, and
  draws images of observed label sets until every class has the most
  frequent class's count (:func:`agt_jax.models.vae.balancing_plan`).

  Returns ``{"images" [m, S, S, 3] uint8, "labels" [m, C], "losses"
  (negative ELBO per step), "counts_before", "counts_after"}``.
  """
  from agt_jax.models import vae as vae_lib

  labels = np.asarray(labels).astype(np.int64)
  shape = _rows(images, np.arange(1)).shape
  cells = shape[1] / 2 ** len(ConditionalVAE.widths)
  if shape[1] != shape[2] or cells != int(cells):
    raise ValueError(
      f"the VAE needs square images whose size divides by "
      f"{2 ** len(ConditionalVAE.widths)}; got {shape[1:3]}."
    )
  model, params, losses = train_vae(
    images,
    labels,
    steps=steps,
    batch_size=batch_size,
    latent=latent,
    seed=seed,
    progress=progress,
  )
  plan = vae_lib.balancing_plan(labels)
  drawn = np.array(
    [k for k, n in sorted(plan.items()) for _ in range(n)], np.int64
  ).reshape(-1, labels.shape[1])
  key = jax.random.key(seed + 1)
  out = []
  for start in range(0, len(drawn), 256):  # bounded memory at paper sizes
    key, draw = jax.random.split(key)
    out.append(vae_lib.sample(model, params, drawn[start : start + 256], draw))
  size = shape[1]
  generated = (
    np.concatenate(out) if out else np.zeros((0, size, size, 3), np.uint8)
  )
  return {
    "images": generated,
    "labels": drawn,
    "losses": losses,
    "counts_before": labels.sum(0),
    "counts_after": labels.sum(0) + drawn.sum(0),
  }
