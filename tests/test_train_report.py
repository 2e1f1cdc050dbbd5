"""The report reader survives what a crash leaves in metrics.jsonl."""

from agt_jax.train.report import read_metrics


def test_read_metrics_keeps_the_last_record_of_a_step_and_skips_torn_lines(
    tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text(
      '{"phase": "teacher", "step": 2, "loss": 3.0}\n'
      '{"phase": "teacher", "step": 4, "loss": 2.0}\n'
      '{"phase": "teacher", "step": 4, "loss": 1.5}\n'   # rewritten on resume
      '{"phase": "student", "step": 4, "loss": 9.0}\n'
      '{"phase": "teacher", "st\n')                     # torn by a kill
  got = [(r["phase"], r["step"], r["loss"]) for r in read_metrics(path)]
  assert got == [("teacher", 2, 3.0), ("teacher", 4, 1.5),
                 ("student", 4, 9.0)]


def test_read_metrics_of_a_missing_file_is_empty(tmp_path):
  assert read_metrics(tmp_path / "metrics.jsonl") == []
