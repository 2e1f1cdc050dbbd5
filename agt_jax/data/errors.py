"""Errors that tell the user what went wrong with their data and how to fix it."""

from agt_jax.errors import AgtError


class DatasetNotFoundError(AgtError, FileNotFoundError):
  """A dataset root, or a file inside it, is missing.

  The message lists every place that was searched and how to get the data.
  """

  def __init__(self, name: str, root, looked_for, instructions: str):
    looked = "\n".join(f"  - {p}" for p in looked_for)
    super().__init__(
      f"{name}: no dataset found under {root}.\nLooked for:\n{looked}\n\n"
      f"How to get it:\n{instructions.strip()}"
    )


class LabelFileError(AgtError, ValueError):
  """A label file has missing columns or a bad value; names file/row/column."""


class ImageReadError(AgtError, OSError):
  """An image file could not be decoded; names the file."""


class BadImagesError(AgtError, ValueError):
  """Some referenced image files are missing or do not decode; the message
  gives their count and up to 20 paths."""


class UnsafePickleError(AgtError, ValueError):
  """A pickle asked for something other than the plain data its format
  holds (a crafted file); it was refused before anything ran."""
