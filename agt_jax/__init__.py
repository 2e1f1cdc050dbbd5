"""agt_jax: Adaptive Group Training for long-tailed multi-label fundus images."""

__version__ = "0.1.0"
