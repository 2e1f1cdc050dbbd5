"""How a process finds its cluster, and what each host reads of a batch."""

import numpy as np
import pytest

from agt_jax import distributed
from agt_jax.data import pipeline, samplers
from agt_jax.errors import ConfigError, ConfigMismatchError


@pytest.mark.parametrize(
  "environ,expected",
  [
    ({}, None),
    # An interactive salloc shell is one task: one process.
    (
      {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1", "SLURM_STEP_NODELIST": "a"},
      None,
    ),
    # Slurm outside srun (no step): one process.
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}, None),
    (
      {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4", "SLURM_STEP_NODELIST": "a"},
      distributed.Cluster("slurm"),
    ),
    ({"OMPI_COMM_WORLD_SIZE": "2"}, distributed.Cluster("openmpi")),
    ({"OMPI_COMM_WORLD_SIZE": "1"}, None),
    (
      {
        "JAX_COORDINATOR_ADDRESS": "h0:1234",
        "JAX_NUM_PROCESSES": "4",
        "JAX_PROCESS_ID": "3",
      },
      distributed.Cluster("env", "h0:1234", 4, 3),
    ),
    # A Kubernetes indexed Job names the process by its completion index.
    (
      {
        "JAX_COORDINATOR_ADDRESS": "job-0.svc:1234",
        "JAX_NUM_PROCESSES": "2",
        "JOB_COMPLETION_INDEX": "1",
      },
      distributed.Cluster("env", "job-0.svc:1234", 2, 1),
    ),
  ],
)
def test_detect_from_the_environment(environ, expected):
  assert distributed.detect(environ=environ) == expected


def test_detect_flags_win_and_force_asks_jax():
  env = {"OMPI_COMM_WORLD_SIZE": "2"}
  assert distributed.detect(
    coordinator="127.0.0.1:5", num_processes=2, process_id=0, environ=env
  ) == distributed.Cluster("flags", "127.0.0.1:5", 2, 0)
  assert distributed.detect(force=True, environ={}) == distributed.Cluster(
    "auto"
  )
  assert distributed.Cluster("auto").kwargs() == {}
  assert distributed.Cluster("flags", "h:1", 2, 1).kwargs() == dict(
    coordinator_address="h:1", num_processes=2, process_id=1
  )


@pytest.mark.parametrize(
  "kw,environ,says",
  [
    (
      dict(coordinator="h:1"),
      {},
      "--coordinator given without " "--num-processes, --process-id",
    ),
    (dict(coordinator="h", num_processes=2, process_id=0), {}, "HOST:PORT"),
    (
      dict(coordinator="h:1", num_processes=2, process_id=2),
      {},
      "must be 0 to 1",
    ),
    (
      {},
      {"JAX_COORDINATOR_ADDRESS": "h:1"},
      "JAX_NUM_PROCESSES and " "JAX_PROCESS_ID",
    ),
    (
      {},
      {
        "JAX_COORDINATOR_ADDRESS": "h:1",
        "JAX_NUM_PROCESSES": "two",
        "JAX_PROCESS_ID": "0",
      },
      "JAX_NUM_PROCESSES='two'",
    ),
  ],
)
def test_detect_incomplete_settings_are_named(kw, environ, says):
  with pytest.raises(ConfigError, match=says):
    distributed.detect(**kw, environ=environ)


def test_single_process_helpers_are_plain():
  assert distributed.is_primary()
  assert distributed.host_rows(16) == (0, 16)
  assert distributed.any_process(True) and not distributed.any_process(False)
  distributed.barrier("no-op on one process")
  np.testing.assert_array_equal(distributed.to_host(np.arange(3)), np.arange(3))


class CountingSource:
  """Images whose pixels encode their index; counts every decode."""

  def __init__(self, n, size=12):
    self.calls, self.n, self.size = [], n, size

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    self.calls.append(int(i))
    rng = np.random.default_rng(i)
    return rng.integers(0, 256, (self.size, self.size, 3), dtype=np.uint8)


def test_each_host_decodes_only_its_rows_with_the_same_augmentation():
  labels = np.eye(4, dtype=np.uint8)[np.arange(40) % 4]
  batches = samplers.instance_balanced_batches(labels, batch_size=8, seed=3)
  one = CountingSource(40)
  whole = pipeline.with_images(batches, one, crop=8, train=True, seed=1)
  parts, sources = [], []
  for host in range(4):
    src = CountingSource(40)
    sources.append(src)
    parts.append(
      pipeline.with_images(
        pipeline.host_batches(batches, process_index=host, process_count=4),
        src,
        crop=8,
        train=True,
        seed=1,
      )
    )
  for t in range(3):
    ref = whole[t]
    got = [p[t] for p in parts]
    for host, (g, src) in enumerate(zip(got, sources)):
      rows = ref["index"][2 * host : 2 * host + 2]
      # Exactly this host's two rows were decoded for step t, nothing else.
      assert src.calls[-2:] == rows.tolist() and len(src.calls) == 2 * (t + 1)
      assert "slot" not in g
    # Hosts' rows, concatenated, are the single-host batch: the same
    # images with the same crops and flips.
    np.testing.assert_array_equal(
      np.concatenate([g["image"] for g in got]), ref["image"]
    )
    np.testing.assert_array_equal(
      np.concatenate([g["labels"] for g in got]), ref["labels"]
    )
  assert len(one.calls) == 3 * 8


def test_host_slice_refuses_an_uneven_batch():
  from agt_jax.errors import InputError

  labels = np.eye(2, dtype=np.uint8)[np.arange(10) % 2]
  ds = samplers.host_slice(
    samplers.instance_balanced_batches(labels, batch_size=6, seed=0),
    process_index=0,
    process_count=4,
  )
  with pytest.raises(InputError, match="batch 6 does not split over 4"):
    ds[0]


def test_resume_with_another_process_count_is_refused(tmp_path):
  from agt_jax.train.checkpoint import Checkpoints

  data = tmp_path / "teacher" / "4" / "data"
  data.mkdir(parents=True)
  for i in range(2):
    (data / f"process_{i}-of-2.json").write_text("{}")
  with pytest.raises(
    ConfigMismatchError,
    match=r"written by 2 process\(es\) " r"and this run has 1: resume with 2",
  ):
    Checkpoints(tmp_path / "teacher").check_process_count(4)
  (data / "process_0-of-2.json").rename(data / "process_0-of-1.json")
  (data / "process_1-of-2.json").unlink()
  Checkpoints(tmp_path / "teacher").check_process_count(4)
