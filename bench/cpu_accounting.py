"""CPU seconds used by named processes, for the benchmarks' "where does the CPU go" figures."""

from __future__ import annotations

import psutil


def cpu_seconds(processes: dict[str, int], children: bool = True) -> dict[str, float]:
    """User+system CPU seconds used so far by each named process, with its children unless told otherwise
    (PostgreSQL's backends are children; a benchmark script's servers and workers are too)."""
    used = {}
    for name, pid in processes.items():
        try:
            process = psutil.Process(pid)
            tree = [process, *(process.children(recursive=True) if children else [])]
        except psutil.NoSuchProcess:
            continue
        total = 0.0
        for member in tree:
            try:
                times = member.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                pass
        used[name] = total
    return used
