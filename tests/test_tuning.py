"""The Optuna search: trials scored on the validation split only, the
study resumable (finished trials kept, a trial cut short retried with its
parameters), n_trials counting the finished ones."""

import json

import pytest

optuna = pytest.importorskip("optuna")

from experiments import _tuning  # noqa: E402
from experiments.stack_ensemble import BASE_RUN  # noqa: E402


def test_a_three_trial_study_resumes(tmp_path, monkeypatch):
  monkeypatch.setenv("AGT_JAX_CACHE", str(tmp_path / "cache"))
  base = {
    **BASE_RUN,
    "model": "resnet_tiny",
    "teacher_steps": 4,
    "eval_every": 2,
    "max_images": 160,
  }
  wd = tmp_path / "tune"
  out = _tuning.tune(base, n_trials=2, workdir=wd, preset="smoke")
  assert len(out["trials"]) == 2 and set(out["best"]) == {"lr", "weight_decay"}
  for t in out["trials"]:  # the value is the run's own validation score
    res = json.loads((wd / t["folder"] / "fold0" / "results.json").read_text())
    assert t["val_final"] == pytest.approx(
      res["selection"]["teacher"]["val"]["final"]
    )
    assert res["config"]["lr"] == pytest.approx(t["params"]["lr"])
    assert res["config"]["weight_decay"] == pytest.approx(
      t["params"]["weight_decay"]
    )
  first = {
    t["folder"]: (wd / t["folder"] / "fold0" / "done.json").stat().st_mtime_ns
    for t in out["trials"]
  }
  # A trial cut short (a crash after the sampler asked): left RUNNING.
  study = optuna.load_study(
    study_name="tune", storage=f"sqlite:///{wd / 'study.db'}"
  )
  cut = study.ask()
  params = {
    k: cut.suggest_float(k, lo, hi, log=log)
    for k, (lo, hi, log) in _tuning.space_for("agt").items()
  }
  out = _tuning.tune(base, n_trials=3, workdir=wd, preset="smoke")
  assert len(out["trials"]) == 3
  assert params in [t["params"] for t in out["trials"]]  # retried as it was
  for folder, mtime in first.items():  # finished trials were not rerun
    assert (wd / folder / "fold0" / "done.json").stat().st_mtime_ns == mtime
  assert json.loads((wd / "best.json").read_text())["value"] == out["value"]
  # Asking for no more than is finished trains nothing.
  again = _tuning.tune(base, n_trials=3, workdir=wd, preset="smoke")
  assert again["trials"] == out["trials"]
