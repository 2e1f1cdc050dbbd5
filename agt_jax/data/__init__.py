"""Datasets, folds, samplers and Grain pipelines.

Loaders return an :class:`ImageTable`; samplers turn its labels into Grain
datasets of label-only batches; :mod:`agt_jax.data.pipeline` attaches images.
Names are imported lazily, so e.g. the renderer works without Grain or tfds.
"""

import importlib

_EXPORTS = {
  "DatasetNotFoundError": "errors",
  "ImageReadError": "errors",
  "LabelFileError": "errors",
  "ImageTable": "table",
  "fold_split": "folds",
  "patient_folds": "folds",
  "load_odir5k": "odir",
  "packaged_label_table": "odir",
  "load_rfmid": "rfmid",
  "load_cifar100_lt": "cifar",
  "group_mixed_batches": "samplers",
  "validate_groups": "samplers",
  "load_dataset": "registry",
  "load_synth": "synth",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name in _EXPORTS:
    module = importlib.import_module(f"agt_jax.data.{_EXPORTS[name]}")
    return getattr(module, name)
  raise AttributeError(f"module 'agt_jax.data' has no attribute {name!r}")
