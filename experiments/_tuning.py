"""Hyperparameter search with Optuna on the inner validation split (paper
003: learning rate, weight decay and dropout per backbone).

Each trial trains one configuration on fold 0's fit split and is scored by
the ODIR final score of its selected model on fold 0's **validation** split
(the patients carved from the training fold): the test fold is never read
to choose. The study lives in ``<workdir>/study.db`` (SQLite), each
trial's run in a folder named by its parameters, so an interrupted search
resumes: finished trials are kept, a trial cut short is retried with the
same parameters (its run resumes from its checkpoints), and ``n_trials``
counts the finished ones. Needs ``pip install 'agt-jax[tune]'``.
``experiments.stack_ensemble --tune N`` runs it per backbone.

Space (log-uniform where marked): ``lr`` 1e-5-1e-2 (log), ``weight_decay``
1e-6-1e-2 (log; AdamW), and ``dropout`` 0-0.5 only for trainers whose head
has dropout (``transfer``). The sampler is TPE, seeded.
"""

from __future__ import annotations

import hashlib
import json
import pathlib

from agt_jax.errors import ConfigError

SPACE = {
  "lr": (1e-5, 1e-2, True),
  "weight_decay": (1e-6, 1e-2, True),
  "dropout": (0.0, 0.5, False),
}
# Which trainers read which knob (dropout: the transfer head's MLP).
DROPOUT_TRAINERS = ("transfer",)


def space_for(trainer: str) -> dict:
  return {
    k: v
    for k, v in SPACE.items()
    if k != "dropout" or trainer in DROPOUT_TRAINERS
  }


def _folder(params: dict) -> str:
  key = json.dumps(params, sort_keys=True).encode()
  return "trial-" + hashlib.sha1(key).hexdigest()[:10]


def tune(
  base: dict,
  *,
  n_trials: int,
  workdir,
  preset: str,
  phase: str = "teacher",
  seed: int = 0,
) -> dict:
  """Runs the study to ``n_trials`` finished trials; returns ``{"best":
  params, "value": validation final score, "trials": [...]}`` (also
  written to ``<workdir>/best.json``)."""
  try:
    import optuna
  except ImportError:
    raise ConfigError(
      "--tune needs Optuna: pip install 'agt-jax[tune]'."
    ) from None
  from experiments import _harness as h

  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  study = optuna.create_study(
    study_name="tune",
    storage=f"sqlite:///{workdir / 'study.db'}",
    direction="maximize",
    sampler=optuna.samplers.TPESampler(seed=seed),
    load_if_exists=True,
  )
  state = optuna.trial.TrialState
  for t in study.get_trials(deepcopy=False, states=(state.RUNNING,)):
    # Cut short by a crash or a signal: retried with its parameters.
    study.tell(t.number, state=state.FAIL)
    study.enqueue_trial(t.params)
  space = space_for(base.get("trainer", "agt"))

  def objective(trial) -> float:
    params = {
      k: trial.suggest_float(k, lo, hi, log=log)
      for k, (lo, hi, log) in space.items()
    }
    run = h.Run(_folder(params), params, phase)
    row = h.run_grid(
      [run], preset=preset, folds=[0], base=base, workdir=workdir
    )[0]
    trial.set_user_attr("folder", run.name)
    return float(row["val_final"])

  done = len(study.get_trials(states=(state.COMPLETE,)))
  if n_trials > done:
    study.optimize(objective, n_trials=n_trials - done)
  trials = [
    {
      "number": t.number,
      "params": t.params,
      "val_final": t.value,
      "folder": t.user_attrs.get("folder"),
    }
    for t in study.get_trials(states=(state.COMPLETE,))
  ]
  out = {
    "best": study.best_params,
    "value": study.best_value,
    "trials": trials,
    "selected_on": "fold 0's validation split (ODIR final score)",
  }
  (workdir / "best.json").write_text(json.dumps(out, indent=1) + "\n")
  return out
