"""Cost of the AGT loss versus plain BCE, forward + backward, on logits only.

Prints one JSON line per loss. This isolates the loss (the full train-step
benchmark includes the encoder); on any device it should be a rounding error
next to a ResNet-50 step.

  python benchmarks/loss_overhead.py --batch-size 64 --classes 8 --steps 200
"""

import argparse
import json

import jax
import jax.numpy as jnp
import optax
from timing import time_steps

from agt_jax import losses


def main(argv=None) -> None:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawTextHelpFormatter
  )
  p.add_argument("--batch-size", type=int, default=64)
  p.add_argument("--classes", type=int, default=8)
  p.add_argument("--steps", type=int, default=200)
  p.add_argument("--warmup", type=int, default=10)
  p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
  a = p.parse_args(argv)
  dtype = jnp.dtype(a.dtype)
  z = jax.random.normal(jax.random.key(0), (a.batch_size, a.classes), dtype)
  y = jax.random.bernoulli(jax.random.key(1), 0.2, z.shape)
  systems = {
    "bce": lambda x: optax.losses.sigmoid_binary_cross_entropy(x, y).sum(),
    "agt_reweighted_bce": lambda x: losses.gradient_reweighted_bce(x, y).sum(),
    "focal": lambda x: losses.sigmoid_focal_loss(x, y).sum(),
  }
  for name, loss in systems.items():
    fn = jax.jit(jax.value_and_grad(loss))
    compile_s, med, p90 = time_steps(lambda t: fn(z), a.steps, a.warmup)
    print(
      json.dumps(
        {
          "system": name,
          "batch_size": a.batch_size,
          "classes": a.classes,
          "dtype": a.dtype,
          "ms_median": med * 1e3,
          "ms_p90": p90 * 1e3,
          "compile_s": compile_s,
          "device": str(jax.devices()[0]),
          "jax": jax.__version__,
        }
      )
    )


if __name__ == "__main__":
  main()
