"""agt_jax: Adaptive Group Training for long-tailed multi-label fundus images."""

__version__ = "0.1.0"


def __getattr__(name: str):
  # The predictor loads the training stack: imported on first use only.
  if name == "load_predictor":
    from agt_jax.predict import load_predictor

    return load_predictor
  raise AttributeError(f"module 'agt_jax' has no attribute {name!r}")
