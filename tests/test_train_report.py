"""The report reader survives what a crash leaves in metrics.jsonl."""

from agt_jax.train.report import read_metrics


def test_read_metrics_keeps_the_last_record_of_a_step_and_skips_torn_lines(
  tmp_path,
):
  path = tmp_path / "metrics.jsonl"
  path.write_text(
    '{"phase": "teacher", "step": 2, "loss": 3.0}\n'
    '{"phase": "teacher", "step": 4, "loss": 2.0}\n'
    '{"phase": "teacher", "step": 4, "loss": 1.5}\n'  # rewritten on resume
    '{"phase": "student", "step": 4, "loss": 9.0}\n'
    '{"phase": "teacher", "st\n'
  )  # torn by a kill
  got = [(r["phase"], r["step"], r["loss"]) for r in read_metrics(path)]
  assert got == [("teacher", 2, 3.0), ("teacher", 4, 1.5), ("student", 4, 9.0)]


def test_read_metrics_of_a_missing_file_is_empty(tmp_path):
  assert read_metrics(tmp_path / "metrics.jsonl") == []


def test_plots_with_many_classes_or_nothing_to_draw_lay_out_cleanly(tmp_path):
  # 100 classes used to get a 100-entry legend (layout warnings and curves
  # hidden behind it); an empty plot used to warn about a legend with no
  # artists. Each must now draw without any warning.
  import warnings

  import matplotlib.image as mpimg
  import numpy as np

  from agt_jax.train import report

  rng = np.random.default_rng(0)
  y = (rng.random((300, 100)) < 0.1).astype(int)
  p = np.clip(0.3 * y + 0.7 * rng.random(y.shape), 0, 1)
  names = [f"c{i}" for i in range(100)]
  metrics = [
    {
      "phase": "teacher",
      "step": s,
      "pos": list(-rng.random(100)),
      "neg": list(rng.random(100)),
      "w": list(rng.random(100)),
    }
    for s in range(1, 6)
  ]
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    report.plot_roc(
      y, {"teacher": p, "student": p}, names, tmp_path / "roc.png", "t"
    )
    report.plot_roc(
      np.zeros((5, 3), int),
      {"m": np.zeros((5, 3))},
      ["a", "b", "c"],
      tmp_path / "roc_empty.png",
      "t",
    )
    report.plot_gradients(metrics, names, tmp_path / "grad.png", "t")
    report.plot_curves([], tmp_path / "curves.png", "t")
  for f in ("roc", "roc_empty", "grad", "curves"):
    assert mpimg.imread(tmp_path / f"{f}.png").shape[0] > 100
