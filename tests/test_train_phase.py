"""MetricWriter's history after a resume, and the mesh's batch check."""

import json

import jax
import pytest

from agt_jax.errors import ConfigError
from agt_jax.runtime import MetricWriter, make_mesh


def _lines(path):
  return [json.loads(l) for l in path.read_text().splitlines()]


def test_truncate_drops_the_resumed_phase_after_the_restored_step(tmp_path):
  w = MetricWriter(tmp_path / "metrics.jsonl")
  for step in (2, 4, 6):
    w.write({"phase": "warmup", "step": step, "loss": 1.0})
  for step in (2, 4, 6, 8):
    w.write({"phase": "teacher", "step": step, "loss": 0.5})
  w.write({"phase": "eval_teacher", "step": 4, "final": 0.1})
  w.write({"phase": "eval_teacher", "step": 8, "final": 0.2})
  with open(w.path, "a") as f:  # a kill in the middle of a write
    f.write('{"phase": "teacher", "st')
  w.truncate("teacher", 4)
  got = [(r["phase"], r["step"]) for r in _lines(w.path)]
  assert got == [
    ("warmup", 2),
    ("warmup", 4),
    ("warmup", 6),
    ("teacher", 2),
    ("teacher", 4),
    ("eval_teacher", 4),
  ]
  assert not list(tmp_path.glob("*.tmp"))


def test_truncate_without_a_file_writes_nothing(tmp_path):
  MetricWriter(tmp_path / "metrics.jsonl").truncate("teacher", 0)
  assert not (tmp_path / "metrics.jsonl").exists()


def test_make_mesh_names_batch_sizes_that_split():
  n = jax.device_count()
  assert make_mesh(4 * n, 2 * n).devices.size == n
  if n == 1:
    pytest.skip("every batch splits over one device")
  with pytest.raises(
    ConfigError, match=r"batch_size=.*multiple of " rf"{n}.*{2 * n}"
  ):
    make_mesh(2 * n + 1)
