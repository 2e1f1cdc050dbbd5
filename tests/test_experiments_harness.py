"""The experiment harness's small parts: results rows, fold lists, means."""

from experiments import _harness as h


def test_harness_read_rows_keeps_last_line_per_run(tmp_path):
  for k in (0.1, 0.2):
    h.append_row(
      tmp_path, {"run": "a", "fold": 0, "preset": "smoke", "kappa": k}
    )
  h.append_row(
    tmp_path, {"run": "a", "fold": 1, "preset": "smoke", "kappa": 0.3}
  )
  got = sorted(h.read_rows(tmp_path), key=lambda r: r["fold"])
  assert [r["kappa"] for r in got] == [0.2, 0.3]
  assert h.mean_std([0.2, 0.3]) == "0.250 ± 0.050"
  assert h.parse_folds(["all"]) == [0, 1, 2, 3, 4]
