"""Timing helpers shared by the benchmark scripts (imported as a sibling module: ``from _timing import ...``)."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

#: ``--clock`` choices: wall time, or this process's CPU time (steadier on a shared machine, with one thread).
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def echo(text: str = "") -> None:
    """One line on stdout, flushed (benchmarks report through stdout, not logging)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def interleaved(
    variants: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Median seconds per call of each variant, measured with ``clock``.

    Every variant is called ``warmup`` times untimed, then the variants alternate ``repeats`` times with the order
    flipped every repeat, so that a slow drift of the machine weighs on all of them alike.
    """
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(repeats):
        for name in names if i % 2 == 0 else reversed(names):
            start = clock()
            variants[name]()
            times[name].append(clock() - start)
    return {name: statistics.median(values) for name, values in times.items()}
