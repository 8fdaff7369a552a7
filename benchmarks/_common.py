"""What the benchmark scripts share: the machine description, CPU accounting, timing, tables.

The scripts run as ``python3 benchmarks/<script>.py`` and import this file as a plain module
(``from _common import ...``) after putting the ``benchmarks`` folder first on ``sys.path``.

Only the standard library is imported at the top: numpy, numba, torch and transformers are
imported inside the functions that need them, so that a script (or a child process that
measures its own peak memory) pays for nothing it does not use.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

# -- machine ------------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpus_usable() -> int:
    """How many CPUs this process may run on (its affinity mask), else the CPU count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 0


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages, or None where the platform has none."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def fmt_load(load: Sequence[float] | None) -> str:
    """``0.52, 0.61, 0.70``, or ``?`` without a load average."""
    return ", ".join(f"{x:.2f}" for x in load) if load else "?"


def machine_info(*, processor: bool = False) -> dict[str, Any]:
    """The host and the software versions, as the headers print them and the JSON records them.

    ``processor`` adds ``platform.processor()`` (after ``cpu_model``).
    """
    import numba
    import numpy as np
    import torch
    import transformers

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
    }
    if processor:
        info["processor"] = platform.processor()
    info.update({
        "cpu_count": os.cpu_count(),
        "cpus_usable": cpus_usable(),
        "load_average": load_average(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "numba_threads": numba.get_num_threads(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "transformers": transformers.__version__,
    })
    return info


def host_line(info: dict[str, Any]) -> str:
    """The header's host description from :func:`machine_info`'s dict."""
    proc = f"processor={info['processor'] or '?'} | " if "processor" in info else ""
    return (f"{info['cpu_model']} | {proc}cpu_count={info['cpu_count']} (usable "
            f"{info['cpus_usable']}) | {info['platform']}")


def proc_field_bytes(path: str, field: str) -> int | None:
    """A ``field:  N kB`` line of a /proc file (``/proc/meminfo``, ``/proc/self/status``) in
    bytes, or None."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


# -- CPU accounting -----------------------------------------------------------------------------


def busy_cpu_seconds() -> float | None:
    """CPU-seconds all processes have spent busy since boot (from /proc/stat), or None."""
    try:
        with open("/proc/stat", encoding="utf-8") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU-seconds this process has used (user + system, all threads)."""
    t = os.times()
    return t.user + t.system


class RunMeter:
    """Wall time since it was made, and the CPU time other processes used meanwhile."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.busy_start = busy_cpu_seconds()
        self.own_start = own_cpu_seconds()

    def elapsed(self) -> float:
        """Wall seconds since the start."""
        return time.perf_counter() - self.start

    def other_cpu_seconds(self) -> float | None:
        """CPU-seconds that other processes used since the start, or None without /proc/stat."""
        busy_end = busy_cpu_seconds()
        if self.busy_start is None or busy_end is None:
            return None
        return max(0.0, (busy_end - self.busy_start) - (own_cpu_seconds() - self.own_start))


def print_footer(meter: RunMeter, ncpu: int) -> dict[str, Any]:
    """Prints the total time, the other processes' share of ``ncpu`` CPUs and the load average.

    Returns them for the JSON: ``total_s``, ``other_processes_cpu_s`` and ``load_average_end``
    (None where unknown).
    """
    elapsed = meter.elapsed()
    other_cpu = meter.other_cpu_seconds()
    load_end = load_average()
    print()
    line = f"total time {elapsed:,.1f} s"
    if other_cpu is not None:
        ncpu = ncpu or 1
        share = other_cpu / (elapsed * ncpu)
        line += (f"; other processes used {other_cpu:,.1f} CPU-s meanwhile ({share:.0%} of "
                 f"{ncpu} CPUs)")
        if share > 0.1:
            line += " -- the machine was busy: read the numbers as lower bounds"
    print(line)
    if load_end:
        print(f"load avg at the end: {fmt_load(load_end)}")
    return {"total_s": elapsed, "other_processes_cpu_s": other_cpu, "load_average_end": load_end}


def write_json(path: str, payload: dict[str, Any],
               default: Callable[[Any], Any] | None = None) -> None:
    """Writes ``payload`` to ``path`` as indented JSON and says so."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2, default=default)
    print(f"wrote {path}")


# -- timing -------------------------------------------------------------------------------------


def no_sync() -> None:
    """A device synchronization for the CPU: nothing to wait for."""


def cuda_sync() -> None:
    """Waits for the current CUDA device."""
    import torch

    torch.cuda.synchronize()


def timed(fn: Callable[[], Any], sync: Callable[[], None] = no_sync) -> tuple[float, Any]:
    """(seconds, result) of one call of ``fn``, synchronizing the device before and after."""
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t0, out


def time_call(fn: Callable[[], Any], sync: Callable[[], None] = no_sync) -> float:
    """Seconds for one call of ``fn``, synchronizing the device before and after."""
    return timed(fn, sync)[0]


def measure(
    fn: Callable[[], Any],
    repeats: int,
    *,
    warmup: Callable[[], Any] | None = None,
    sync: Callable[[], None] = no_sync,
    min_seconds: float = 0.0,
    max_repeats: int = 0,
) -> tuple[float, list[float]]:
    """(seconds of the warm-up call, seconds of each timed repeat).

    Times at least ``repeats`` calls, then keeps going (up to ``max_repeats``) while less than
    ``min_seconds`` have been spent, so that fast cases get more chances at a quiet moment.
    """
    first = time_call(warmup if warmup is not None else fn, sync)
    times = [time_call(fn, sync) for _ in range(repeats)]
    while len(times) < max_repeats and sum(times) < min_seconds:
        times.append(time_call(fn, sync))
    return first, times


def best_of(fn: Callable[[], Any], repeats: int, budget_s: float = math.inf
            ) -> tuple[list[float], Any]:
    """Up to ``repeats`` timed calls; no further call once it would end past ``budget_s``."""
    times: list[float] = []
    out: Any = None
    while len(times) < repeats:
        dt, out = timed(fn)
        times.append(dt)
        if sum(times) + min(times) > budget_s:
            break
    return times, out


def repeat_for(fn: Callable[[], Any], min_calls: int, min_seconds: float) -> list[float]:
    """At least ``min_calls`` timed calls, more until ``min_seconds`` are spent (max 200)."""
    times: list[float] = []
    while len(times) < min_calls or (sum(times) < min_seconds and len(times) < 200):
        times.append(timed(fn)[0])
    return times


# -- output -------------------------------------------------------------------------------------


def fmt_rate(per_s: float | None, digits: int = 1, giga: bool = False) -> str:
    """A rate with a k/M suffix (and G with ``giga``), ``digits`` decimals; ``-`` for None."""
    if per_s is None:
        return "-"
    scales = ((1e9, "G"),) if giga else ()
    for scale, unit in (*scales, (1e6, "M"), (1e3, "k")):
        if per_s >= scale:
            return f"{per_s / scale:,.{digits}f}{unit}"
    return f"{per_s:,.0f}"


def fmt_tokens(n: int) -> str:
    """``20M``, ``500k`` for round counts, else ``1,234,567``."""
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1_000 and n % 1_000 == 0:
        return f"{n // 1_000}k"
    return f"{n:,}"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A plain-text table: the first column left-aligned, the others right-aligned."""
    if not rows:
        print("(nothing measured)")
        return
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    print(line(headers))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line(r))


def meets(ok: bool | None, unjudged: str = "") -> str:
    """A target column: ``yes``, ``NO``, or ``unjudged`` where the target does not apply."""
    return unjudged if ok is None else ("yes" if ok else "NO")


def section(title: str) -> None:
    """A blank line and a ``== title ====`` rule."""
    print()
    print(f"== {title} " + "=" * max(0, 96 - len(title)), flush=True)


def progress(msg: str) -> None:
    """A progress line on stderr."""
    print(msg, file=sys.stderr, flush=True)
