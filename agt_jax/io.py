"""File writes a crash cannot tear, and JSON-lines logs a crash may have torn.

A leaf module (standard library only): everything that writes a result, a
cache or a log goes through it, so "a kill leaves the previous file or
none, never half of one" holds in one place.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Callable, Iterable
from typing import IO


def cache_dir() -> pathlib.Path:
  """The project's cache: ``$AGT_JAX_CACHE``, default
  ``$XDG_CACHE_HOME/agt_jax`` (``~/.cache/agt_jax``)."""
  env = os.environ.get("AGT_JAX_CACHE")
  if env:
    return pathlib.Path(env).expanduser()
  return (
    pathlib.Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser()
    / "agt_jax"
  )


def atomic_write(path, write: Callable[[IO[bytes]], object]) -> None:
  """Calls ``write(f)`` on a temporary file beside ``path``, flushes it to
  disk and renames it into place (``os.replace``: atomic on POSIX). The
  temporary name is the writer's own (process id and a random part), so
  two processes writing one file never rename each other's."""
  path = pathlib.Path(path)
  tmp = path.with_name(f".{path.name}.{os.getpid()}-{os.urandom(4).hex()}.tmp")
  with open(tmp, "wb") as f:
    write(f)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def atomic_write_bytes(path, data: bytes) -> None:
  atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path, text: str) -> None:
  """Writes ``text`` (UTF-8) to ``path`` atomically."""
  atomic_write_bytes(path, text.encode())


def append_jsonl(path, record: dict) -> None:
  """Appends ``record`` as one JSON line."""
  with open(path, "a") as f:
    f.write(json.dumps(record) + "\n")


def read_jsonl(path) -> list[dict]:
  """Every complete JSON line of ``path`` (none if it does not exist); a
  line torn by a kill mid-write is skipped."""
  path = pathlib.Path(path)
  if not path.exists():
    return []
  out = []
  for line in path.read_text().splitlines():
    try:
      out.append(json.loads(line))
    except json.JSONDecodeError:
      continue
  return out


def rewrite_jsonl(path, records: Iterable[dict]) -> None:
  """Replaces ``path`` with ``records``, one JSON line each, atomically."""
  atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))
