"""Datasets, folds, samplers and Grain pipelines.

Loaders return an :class:`ImageTable`; samplers turn its labels into Grain
datasets of label-only batches; :mod:`agt_jax.data.pipeline` attaches images.
"""

from agt_jax.data.errors import DatasetNotFoundError
from agt_jax.data.errors import ImageReadError
from agt_jax.data.errors import LabelFileError
from agt_jax.data.folds import fold_split
from agt_jax.data.folds import patient_folds
from agt_jax.data.odir import load_odir5k
from agt_jax.data.odir import packaged_label_table
from agt_jax.data.rfmid import load_rfmid
from agt_jax.data.cifar import load_cifar100_lt
from agt_jax.data.samplers import group_mixed_batches
from agt_jax.data.samplers import validate_groups
from agt_jax.data.table import ImageTable

__all__ = [
    "DatasetNotFoundError", "ImageReadError", "ImageTable", "LabelFileError",
    "fold_split", "group_mixed_batches", "load_cifar100_lt", "load_odir5k",
    "load_rfmid", "packaged_label_table", "patient_folds", "validate_groups",
]
