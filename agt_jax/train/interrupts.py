"""SIGINT / SIGTERM handling: finish the step, checkpoint, stop cleanly.

While :func:`handle_signals` is active (``train_and_evaluate`` enters it),
a signal that arrives inside a training loop (:func:`deferred`) is only
recorded; the loop sees it via :func:`pending` after the current step,
writes a checkpoint at that step, waits for every in-flight save and raises
:class:`~agt_jax.errors.Interrupted`. A signal outside a training loop
(loading data, evaluating) raises ``Interrupted`` at once: nothing is being
written there. A second signal while one is pending raises at once too, for
a user who does not want to wait for the checkpoint.

A signal never raises inside a library's wait (:func:`shielded`: an orbax
save being finalised, its manager closing): it is recorded, the wait runs to
its end, and only then does the run stop, naming the stage it was in.

Slurm and Kubernetes send SIGTERM; a terminal sends SIGINT. Entry points
turn ``Interrupted`` into one line and exit status ``128 + signum``.
"""

from __future__ import annotations

import contextlib
import signal
import threading

from agt_jax.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _State:
  depth = 0  # nesting of handle_signals
  deferring = 0  # nesting of deferred()
  shielding = 0  # nesting of shielded()
  pending: int | None = None
  stage = "before training started"


_state = _State()


def _handler(signum, frame):
  del frame
  if _state.shielding:
    _state.pending = _state.pending or signum
    return
  if _state.deferring and _state.pending is None:
    _state.pending = signum
    return
  raise Interrupted(signum, _state.stage)


@contextlib.contextmanager
def handle_signals():
  """Installs the handlers (main thread only; elsewhere a no-op) and
  restores the previous ones on exit."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  if _state.depth:  # nested: the outer one owns the handlers
    _state.depth += 1
    try:
      yield
    finally:
      _state.depth -= 1
    return
  previous = {s: signal.getsignal(s) for s in SIGNALS}
  _state.depth, _state.pending = 1, None
  for s in SIGNALS:
    signal.signal(s, _handler)
  try:
    yield
  finally:
    for s, h in previous.items():
      signal.signal(s, h)
    _state.depth, _state.pending = 0, None
    _state.stage = "before training started"


@contextlib.contextmanager
def deferred():
  """Inside: a signal is recorded for :func:`pending`, not raised."""
  _state.deferring += 1
  try:
    yield
  finally:
    _state.deferring -= 1


@contextlib.contextmanager
def shielded():
  """Inside: a library call that waits on its own threads (an orbax save,
  finalise or close). A signal is recorded, never raised into it; on
  leaving, outside a training loop, the recorded signal raises
  :class:`Interrupted` with the current stage (inside one, the loop stops
  at its next step as usual). Also a decorator (``@shielded()``), as the
  checkpoint classes use it on every method that calls orbax."""
  _state.shielding += 1
  try:
    yield
  finally:
    _state.shielding -= 1
  if (
    _state.depth
    and not _state.shielding
    and not _state.deferring
    and _state.pending is not None
  ):
    signum, _state.pending = _state.pending, None
    raise Interrupted(signum, _state.stage)


def pending() -> int | None:
  """The signal number received inside :func:`deferred`, if any."""
  return _state.pending


def clear() -> None:
  _state.pending = None


def set_stage(text: str) -> None:
  """What the run is doing, for the message of an interrupt that arrives
  outside a training loop (e.g. ``"while evaluating the test fold"``)."""
  _state.stage = text
