"""AGT training: pure steps (:mod:`steps`), the fold loop (:mod:`loop`),
checkpoints and reports."""

from agt_jax.train.loop import ConfigMismatchError
from agt_jax.train.loop import NonFiniteLossError
from agt_jax.train.loop import train_and_evaluate
from agt_jax.train.summary import summarize_folds

__all__ = ["ConfigMismatchError", "NonFiniteLossError", "summarize_folds",
           "train_and_evaluate"]
