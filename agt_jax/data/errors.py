"""Errors that tell the user what went wrong with their data and how to fix it."""


class DatasetNotFoundError(FileNotFoundError):
  """A dataset root, or a file inside it, is missing.

  The message lists every place that was searched and how to get the data.
  """

  def __init__(self, name: str, root, looked_for, instructions: str):
    looked = "\n".join(f"  - {p}" for p in looked_for)
    super().__init__(
        f"{name}: no dataset found under {root}.\nLooked for:\n{looked}\n\n"
        f"How to get it:\n{instructions.strip()}")


class LabelFileError(ValueError):
  """A label file has missing columns or a bad value; names file/row/column."""


class ImageReadError(OSError):
  """An image file could not be decoded; names the file."""
