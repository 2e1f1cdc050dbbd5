"""MGDA min-norm solver (Sener & Koltun 2018), jit-able and bounded.

Used by the GBG peer (gradient-based grouping, paper 004): per-group backbone
gradients are combined with the convex weights of the minimum-norm point of
their hull, so no group's loss increases to first order.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

_HI = jax.lax.Precision.HIGHEST
# The two-vector solver never returns exactly 0 or 1 (reference behaviour).
_LO_CLIP, _HI_CLIP = 0.001, 0.999


def _min_norm_from2(v11, v12, v22):
  """argmin_c |c x1 + (1-c) x2|^2 from the three inner products: (c, cost)."""
  denom = v11 + v22 - 2.0 * v12
  safe = jnp.where(denom == 0, 1.0, denom)
  gamma = -(v12 - v22) / safe
  cost = v22 + gamma * (v12 - v22)
  gamma = jnp.where(v12 >= v22, _LO_CLIP, gamma)
  cost = jnp.where(v12 >= v22, v22, cost)
  # The first case of the reference wins when both hold.
  gamma = jnp.where(v12 >= v11, _HI_CLIP, gamma)
  cost = jnp.where(v12 >= v11, v11, cost)
  return gamma, cost


def _projection_to_simplex(y):
  """Euclidean projection of `y` onto the probability simplex."""
  m = y.shape[0]
  s = jnp.sort(y)[::-1]
  csum = jnp.cumsum(s)[:-1]
  tmax = (csum - 1.0) / jnp.arange(1, m, dtype=y.dtype)
  hit = tmax > s[1:]
  first = jnp.argmax(hit)
  t = jnp.where(jnp.any(hit), tmax[first], (jnp.sum(y) - 1.0) / m)
  return jnp.maximum(y - t, 0.0)


def _next_point(cur, grad):
  """One projected-gradient step with the reference's step-size rule."""
  n = cur.shape[0]
  proj = grad - jnp.sum(grad) / n
  inf = jnp.asarray(jnp.inf, cur.dtype)
  neg, posi = proj < 0, proj > 0
  tm1 = jnp.where(neg, -cur / jnp.where(neg, proj, 1.0), inf)
  tm2 = jnp.where(posi, (1.0 - cur) / jnp.where(posi, proj, 1.0), inf)
  tm1 = jnp.where(tm1 > 1e-7, tm1, inf)
  tm2 = jnp.where(tm2 > 1e-7, tm2, inf)
  # Reference rule: t = min over valid tm1 (which may exceed 1), else 1; then
  # t = min(t, min over valid tm2).
  t1 = jnp.min(tm1)
  t = jnp.minimum(jnp.where(jnp.isfinite(t1), t1, 1.0), jnp.min(tm2))
  return _projection_to_simplex(proj * t + cur)


def min_norm_weights(
  vectors: ArrayLike,
  *,
  max_iters: int = 250,
  tol: float = 1e-5,
) -> tuple[jax.Array, jax.Array]:
  r"""Convex weights of the minimum-norm point in the hull of `K` vectors.

  .. math::
    \min_{c \in \Delta_K} \Big\| \sum_k c_k v_k \Big\|_2^2

  Same semantics as the reference solver (``find_min_norm_element``):

  1. the best pair by the two-vector closed form, whose weight is clipped to
     ``0.999``/``0.001`` when one vector dominates (so the collinear case
     returns ``[0.999, 0.001]``, not ``[1, 0]``); for :math:`K = 2` this is
     the answer;
  2. for :math:`K \ge 3`, projected-gradient steps on the simplex with an
     exact line search (the two-vector form again), stopping when
     :math:`\sum_k |\Delta c_k|` < ``tol``, returning the iterate *before*
     the last step and the last line-search cost.

  Unlike the reference, whose iteration counter never advances, the loop is
  a ``lax.while_loop`` bounded by ``max_iters``; when the bound is hit the
  latest iterate is returned. Weights are meant to be constants (callers
  ``stop_gradient`` them).

  Args:
    vectors: `[K, D]` floating, one flattened gradient per task/group.
    max_iters: bound on projected-gradient iterations.
    tol: stopping threshold on the L1 change of the weights.

  Returns:
    ``(weights [K], min_norm_sq [])``.

  References:
    Sener & Koltun, *Multi-Task Learning as Multi-Objective Optimization*,
    NeurIPS 2018.
  """
  v = jnp.asarray(vectors)
  if v.ndim != 2 or not jnp.issubdtype(v.dtype, jnp.floating):
    raise ValueError(
      f"`vectors` must be a floating [K, D] array, got shape "
      f"{v.shape} dtype {v.dtype}."
    )
  k = v.shape[0]
  gram = jnp.dot(v, v.T, precision=_HI)
  if k == 1:
    return jnp.ones((1,), v.dtype), gram[0, 0]

  pairs = list(itertools.combinations(range(k), 2))
  ii = jnp.array([p[0] for p in pairs])
  jj = jnp.array([p[1] for p in pairs])
  cs, ds = _min_norm_from2(gram[ii, ii], gram[ii, jj], gram[jj, jj])
  best = jnp.argmin(ds)  # first minimum, as the reference's strict `<`
  sol = jnp.zeros((k,), v.dtype)
  sol = sol.at[ii[best]].set(cs[best]).at[jj[best]].add(1.0 - cs[best])
  if k == 2:
    return sol, ds[best]

  def cond(carry):
    it, _, _, done = carry
    return jnp.logical_and(it < max_iters, jnp.logical_not(done))

  def body(carry):
    it, sol, _, _ = carry
    new_point = _next_point(sol, -jnp.dot(gram, sol, precision=_HI))
    v11 = sol @ gram @ sol
    v12 = sol @ gram @ new_point
    v22 = new_point @ gram @ new_point
    nc, nd = _min_norm_from2(v11, v12, v22)
    new_sol = nc * sol + (1.0 - nc) * new_point
    done = jnp.sum(jnp.abs(new_sol - sol)) < tol
    return it + 1, jnp.where(done, sol, new_sol), nd, done

  init = (jnp.asarray(0), sol, ds[best], jnp.asarray(False))
  _, sol, cost, _ = jax.lax.while_loop(cond, body, init)
  return sol, cost


def gradient_normalizers(
  grads: ArrayLike, losses: ArrayLike, *, kind: str = "loss+"
) -> jax.Array:
  r"""Per-task gradient scales used before MGDA (GBG uses ``"loss+"``).

  ``"l2"``: :math:`\|g_k\|`; ``"loss"``: :math:`L_k`; ``"loss+"``:
  :math:`L_k \|g_k\|`; ``"none"``: 1. Divide each gradient by its scale.

  Args:
    grads: `[K, D]` flattened gradients.
    losses: `[K]` task losses.
    kind: one of the above.

  Returns:
    `[K]` scales.

  References:
    Sener & Koltun, NeurIPS 2018 (``gradient_normalizers``); GBG (paper 004)
    trains with ``"loss+"``.
  """
  g = jnp.asarray(grads)
  norms = jnp.sqrt(jnp.sum(g * g, axis=1))
  losses = jnp.asarray(losses, g.dtype)
  table = {
    "l2": lambda: norms,
    "loss": lambda: losses,
    "loss+": lambda: losses * norms,
    "none": lambda: jnp.ones_like(norms),
  }
  if kind not in table:
    raise ValueError(f"`kind` must be one of {sorted(table)}, got {kind!r}.")
  return table[kind]()
