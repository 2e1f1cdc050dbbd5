"""AGT training: pure steps (:mod:`steps`), the fold pipeline (:mod:`loop`),
one module per trainer (:mod:`agt`, :mod:`gbg`, :mod:`transfer`, resolved by
name in :mod:`trainers`), checkpoints and reports.

The names below load on first use, so ``import agt_jax.train.steps`` does
not pull in checkpointing (orbax) or the data pipeline (grain).
"""

import importlib

_LAZY = {
  "ConfigMismatchError": "agt_jax.errors",
  "NonFiniteLossError": "agt_jax.errors",
  "train_and_evaluate": "agt_jax.train.loop",
  "load_trained": "agt_jax.train.loop",
  "summarize_folds": "agt_jax.train.summary",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
  if name in _LAZY:
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module 'agt_jax.train' has no attribute {name!r}")
