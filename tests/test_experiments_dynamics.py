"""Gradient dynamics (experiments.gradient_dynamics, paper Fig. 6) and the
alpha / temperature sweeps (experiments.sweeps, Fig. 7) on tiny data."""

from tests.cli import rows, run_cli


def test_gradient_dynamics_smoke(tmp_path, cache):
  wd = tmp_path / "g6"
  out = run_cli(
    "experiments.gradient_dynamics",
    ["--preset", "smoke", "--workdir", str(wd)],
    cache,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  report = (wd / "report.md").read_text()
  assert "| no_rw |" in report and "| rw |" in report
  assert "Synthetic data" in report
  assert (wd / "fig6.png").stat().st_size > 1000
  from experiments import gradient_dynamics

  d = gradient_dynamics.tail_dynamics(wd / "rw" / "fold0")
  assert len(d["pos"]) == 6 and len(d["tail_map"]) == 3


def test_sweeps_smoke(tmp_path, cache):
  wd = tmp_path / "s7"
  out = run_cli(
    "experiments.sweeps",
    [
      "--preset",
      "smoke",
      "--folds",
      "0",
      "--alphas",
      "0",
      "0.5",
      "--temperatures",
      "5",
      "--workdir",
      str(wd),
    ],
    cache,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  report = (wd / "report.md").read_text()
  assert "## alpha sweep" in report and "## T sweep" in report
  assert "Best mean kappa at alpha" in report
  assert (wd / "fig7.png").stat().st_size > 1000
  assert {r["run"] for r in rows(wd)} == {"alpha_0", "alpha_0.5", "T_5"}
