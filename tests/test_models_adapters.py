"""TFA-LT's adapter, cosine logits and ensembler against hand-computed
values (paper 002, Eqs. 1-3)."""

import jax
import jax.numpy as jnp
import numpy as np

from agt_jax.models import adapters


def test_residual_adapter_eq1_by_hand():
  f = jnp.array([[1.0, 2.0], [0.0, -1.0]])
  m = adapters.ResidualAdapter(lambda_init=0.0)
  v = m.init(jax.random.key(0), f)
  assert v["params"]["lam"] == 0.0 and "bias" not in v["params"]["A"]
  a = np.array([[2.0, 0.0], [1.0, 3.0]])  # flax kernel: f @ a
  lam = np.log(3.0)  # sigmoid = 0.75
  v = {
    "params": {
      "lam": jnp.asarray(lam, jnp.float32),
      "A": {"kernel": jnp.asarray(a, jnp.float32)},
    }
  }
  got = m.apply(v, f)
  # Row 1: A f' = [1*2 + 2*1, 1*0 + 2*3] = [4, 6];
  # 0.75 [1, 2] + 0.25 [4, 6] = [1.75, 3.0]. Row 2: A f' = [-1, -3];
  # 0.75 [0, -1] + 0.25 [-1, -3] = [-0.25, -1.5].
  np.testing.assert_allclose(got, [[1.75, 3.0], [-0.25, -1.5]], rtol=1e-6)


def test_cosine_logits_eq2_by_hand():
  f = jnp.array([[3.0, 4.0]])
  t = jnp.array([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0]])
  got = adapters.cosine_logits(f, t, tau=0.01)
  # cos = [3/5, 4/5, -3/5], over tau 0.01.
  np.testing.assert_allclose(got, [[60.0, 80.0, -60.0]], rtol=1e-5)
  p = jax.nn.softmax(adapters.cosine_logits(f, t, tau=1.0))
  e = np.exp([0.6, 0.8, -0.6])
  np.testing.assert_allclose(p, [e / e.sum()], rtol=1e-6)


def test_ensembler_eq3_concatenates_both_inputs():
  m = adapters.LinearEnsembler(out=1)
  xw, xr = jnp.array([[1.0, 2.0]]), jnp.array([[3.0, 4.0]])
  v = m.init(jax.random.key(0), xw, xr)
  assert v["params"]["K"]["kernel"].shape == (4, 1)
  v = {
    "params": {
      "K": {
        "kernel": jnp.array([[1.0], [0.0], [0.5], [2.0]]),
        "bias": jnp.array([0.25]),
      }
    }
  }
  # 1*1 + 2*0 + 3*0.5 + 4*2 + 0.25 = 10.75
  np.testing.assert_allclose(m.apply(v, xw, xr), [[10.75]], rtol=1e-6)
