"""`python -m agt_jax`: print the environment and check the paper's worked
examples on this machine's backend."""

import jax
import jax.numpy as jnp
import numpy as np

import agt_jax
from agt_jax import losses


def main() -> None:
  print(
    f"agt_jax {agt_jax.__version__} | jax {jax.__version__} | backend "
    f"{jax.default_backend()} | devices {jax.device_count()}"
  )
  logit = lambda p: float(np.log(p / (1 - p)))
  z = np.array([[logit(0.6)]] + [[logit(0.2)]] * 9, np.float32)
  y = np.array([[1.0]] + [[0.0]] * 9, np.float32)
  w = float(losses.gradient_reweight_weights(z, y)[0])
  print(f"paper §3.4.3 tail-class weight: {w:.7f} (expected 0.0493827)")
  kd = float(
    losses.class_balanced_kd_weights(
      jnp.array([[0, 1, 1]]), jnp.array([1000, 200, 50])
    )[0]
  )
  print(f"paper §3.5 class-balanced KD weight: {kd:.4f} (expected 0.8000)")
  ok = abs(w - 0.0493827) < 1e-6 and abs(kd - 0.8) < 1e-6
  print("ok" if ok else "MISMATCH")
  raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
  main()
