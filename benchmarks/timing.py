"""Shared timing for the benchmark scripts (imported as a sibling module)."""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
import numpy as np


def time_steps(
  run: Callable[[int], object],
  steps: int,
  warmup: int,
  sync: Callable[[object], object] = jax.block_until_ready,
) -> tuple[float, float, float]:
  """``(first_call_s, median_s, p90_s)`` of ``run(t)``; the first call (which
  compiles) is timed apart, then ``warmup`` untimed calls, then ``steps``
  timed ones, each synchronised with ``sync``."""
  t0 = time.perf_counter()
  sync(run(0))
  first = time.perf_counter() - t0
  for t in range(1, warmup + 1):
    sync(run(t))
  times = []
  for t in range(warmup + 1, warmup + 1 + steps):
    t0 = time.perf_counter()
    sync(run(t))
    times.append(time.perf_counter() - t0)
  return first, float(np.median(times)), float(np.percentile(times, 90))
