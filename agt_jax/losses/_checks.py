"""Input validation shared by the losses.

Shapes are static under ``jit``, so these checks run once at trace time and cost
nothing per step. Errors name the argument and its shape, so a user who passes
``[N]`` integer targets where ``[N, C]`` multi-hot labels are expected sees why.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax.typing import ArrayLike


def shape_of(x: ArrayLike) -> tuple[int, ...]:
  return tuple(jnp.shape(x))


def check_floating(x: ArrayLike, name: str) -> None:
  dtype = jnp.result_type(x)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(
      f"`{name}` must have a floating dtype, got {dtype} with shape "
      f"{shape_of(x)}. Cast it, e.g. `{name}.astype(jnp.float32)`."
    )


def check_rank(x: ArrayLike, rank: int, name: str, layout: str) -> None:
  if jnp.ndim(x) != rank:
    raise ValueError(
      f"`{name}` must have rank {rank} ({layout}), got shape {shape_of(x)}."
    )


def check_same_shape(
  x: ArrayLike, name: str, ref: ArrayLike, ref_name: str
) -> None:
  if shape_of(x) != shape_of(ref):
    raise ValueError(
      f"`{name}` has shape {shape_of(x)} but `{ref_name}` has shape "
      f"{shape_of(ref)}; they must match (multi-hot labels are [N, C])."
    )


def check_logits_labels(
  logits: ArrayLike,
  labels: ArrayLike,
  logits_name: str = "logits",
  labels_name: str = "labels",
) -> None:
  """Logits `[N, C]` floating; labels `[N, C]` of any numeric or bool dtype."""
  check_floating(logits, logits_name)
  check_rank(logits, 2, logits_name, "[N, C]")
  check_same_shape(labels, labels_name, logits, logits_name)


def check_class_vector(x: ArrayLike, name: str, num_classes: int) -> None:
  if shape_of(x) != (num_classes,):
    raise ValueError(
      f"`{name}` must have shape ({num_classes},) (one entry per class), "
      f"got {shape_of(x)}."
    )


def check_where(where: ArrayLike | None, logits: ArrayLike) -> None:
  """`where` is a row mask `[N]` or an element mask `[N, C]`."""
  if where is None:
    return
  n, c = shape_of(logits)
  if shape_of(where) not in ((n,), (n, c)):
    raise ValueError(
      f"`where` must have shape ({n},) (valid rows) or ({n}, {c}) (valid "
      f"elements), got {shape_of(where)}."
    )


def where_2d(where: ArrayLike | None, logits: jnp.ndarray) -> jnp.ndarray:
  """The mask broadcast to `[N, C]` in the logits' dtype (ones when None)."""
  if where is None:
    return jnp.ones_like(logits)
  where = jnp.asarray(where)
  if where.ndim == 1:
    where = where[:, None]
  return jnp.broadcast_to(where, logits.shape).astype(logits.dtype)
