"""The project's own error types.

Everything the library raises for bad input or a failed run derives from
:class:`AgtError` (and from the matching built-in type, so ``except
ValueError`` keeps working). Entry points print these as one ``error:`` line
and exit 2; any other exception is a bug and keeps its traceback.
:class:`Interrupted` is separate: it derives from ``KeyboardInterrupt`` so
that no ``except Exception`` swallows a Ctrl-C.
"""

from __future__ import annotations

import signal


class AgtError(Exception):
  """Bad input or a failed run, with a message that says what to do."""


class ConfigError(AgtError, ValueError):
  """A config value is unknown, out of range or inconsistent."""


class InputError(AgtError, ValueError):
  """An argument describing the data is invalid for it (groups that miss a
  class, a fold with no images, labels that are not 0/1)."""


class ConfigMismatchError(ConfigError):
  """A workdir holds a run (or checkpoints) made with another config."""


class NonFiniteLossError(AgtError, FloatingPointError):
  """Training produced a NaN/inf loss or state; nothing non-finite was
  saved and the last good checkpoint is named."""


class CheckpointWriteError(AgtError, OSError):
  """A checkpoint could not be written (e.g. the disk is full)."""


class CheckpointDamagedError(AgtError, OSError):
  """Every checkpoint of a phase is corrupt or truncated."""


class WorkdirBusyError(AgtError, RuntimeError):
  """Another live run holds the workdir."""


class Interrupted(KeyboardInterrupt):
  """SIGINT or SIGTERM stopped a run; ``where`` says at which point (and
  whether a checkpoint was written there)."""

  def __init__(self, signum: int, where: str):
    super().__init__(where)
    self.signum, self.where = signum, where

  @property
  def exit_code(self) -> int:
    """128 + the signal number: 130 for SIGINT, 143 for SIGTERM (what
    shells and schedulers expect)."""
    return 128 + int(self.signum)

  @property
  def signal_name(self) -> str:
    return signal.Signals(self.signum).name
