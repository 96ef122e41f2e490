"""Timing competitors side by side: each repeat runs every competitor in turn, so a busy machine slows all alike."""

from __future__ import annotations

import time
from collections.abc import Callable

Times = dict[str, list[float]]


def interleaved(
    competitors: dict[str, Callable[[], object]], repeats: int = 5, *, warm_up: bool = True
) -> tuple[Times, Times]:
    """Wall and CPU seconds per repeat for each competitor, run in turn within each repeat (after one
    warm-up each unless ``warm_up`` is off). CPU time (all of this process's threads, DuckDB's
    included) shifts less than wall time when other processes share the cores."""
    if warm_up:
        for fn in competitors.values():
            fn()
    wall: Times = {name: [] for name in competitors}
    cpu: Times = {name: [] for name in competitors}
    for _ in range(repeats):
        for name, fn in competitors.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return wall, cpu
