"""How far ahead of a row dot the kernels ask for the row's memory: measured per machine, not one constant.

The row dots (`kernel_q8`, `kernel_vnni`) prefetch each row a fixed number of bytes ahead of where they read.
The best distance follows the memory's latency: on the VM of sessions 1-9 (read bandwidth 27-33 GB/s on one
thread) int8 rows streamed best 512 bytes ahead and int4 rows 256-384, 1,024 and more 20-40% slower; on the
one of session 10 (17-20 GB/s) decode steps took 6-8% less time with int4 experts 2,048 bytes ahead, 2-4% with
int8 ones (docs/performance-history.md, session 10). So `moedge warmup` measures the candidates on this
machine (`runtime/tools/row_prefetch_probe.py`, a fresh process each) and keeps the fastest per kind of row in
`row-prefetch.json` beside the kernel cache, keyed by CPU; the distances are compiled into the kernels (the
cache folder's name includes them). Without a measurement the old defaults hold. MOEDGE_ROW_PREFETCH=INT8,INT4
(bytes) overrides both.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from .errors import InputError

ENV = "MOEDGE_ROW_PREFETCH"
SETTINGS = "row-prefetch.json"
MARGIN = 0.03  # a candidate replaces the default only when it streams this much faster (the runs' noise is ~1-2%)
LIMIT = 1 << 16


class RowPrefetch(NamedTuple):
    """Bytes ahead of the read position at which the row dots prefetch: int8 rows, int4 rows."""

    int8: int
    int4: int


DEFAULT = RowPrefetch(512, 256)
CANDIDATES = (DEFAULT, RowPrefetch(1024, 1024), RowPrefetch(2048, 2048))


def cpu_name() -> str:
    """This CPU's model (the settings of one machine do not hold for another)."""
    try:
        with open("/proc/cpuinfo") as info:  # the first processor's line is enough (every process start reads it)
            for line in info:
                if line.startswith(("model name", "Model", "CPU part")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _distances(values: list) -> RowPrefetch | None:
    """Two byte counts (int8, int4 rows), multiples of 64 in [0, 65536], as a RowPrefetch; else None."""
    if len(values) != 2 or not all(type(v) is int and 0 <= v <= LIMIT and v % 64 == 0 for v in values):
        return None
    return RowPrefetch(*values)


def parse(text: str) -> RowPrefetch:
    """'INT8,INT4' bytes (MOEDGE_ROW_PREFETCH), refused with a one-line error unless two multiples of 64 in
    [0, 65536]."""
    try:
        distances = _distances([int(v) for v in text.split(",")])
    except ValueError:
        distances = None
    if distances is None:
        raise InputError(f"{ENV}={text!r}: expected two byte counts INT8,INT4, multiples of 64 up to {LIMIT}")
    return distances


def measured(base: Path) -> RowPrefetch | None:
    """The distances measured on this CPU and kept under `base`, if any (a file unreadable or of another CPU:
    none, and the next `moedge warmup` measures again)."""
    try:
        settings = json.loads((base / SETTINGS).read_text())
        if settings["cpu"] == cpu_name():
            return _distances([settings["int8"], settings["int4"]])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def chosen(base: Path) -> RowPrefetch:
    """The distances the kernels compile with: MOEDGE_ROW_PREFETCH, else this CPU's measured ones, else `DEFAULT`."""
    if os.environ.get(ENV):
        return parse(os.environ[ENV])
    return measured(base) or DEFAULT


def best(rates: dict[RowPrefetch, tuple[float, float]]) -> RowPrefetch:
    """Per kind of row, the candidate whose rate (GB/s: int8 rows, int4 rows) is highest, if it beats the default's
    by `MARGIN`; else the default's distance."""
    picks = []
    for kind in range(2):
        top = max(rates, key=lambda c: rates[c][kind])
        keep = rates[top][kind] < rates[DEFAULT][kind] * (1 + MARGIN)
        picks.append(DEFAULT[kind] if keep else top[kind])
    return RowPrefetch(*picks)


def calibrate(base: Path, measure: Callable[[RowPrefetch], tuple[float, float]], rounds: int = 2,
              progress: Callable[[str], None] = lambda line: None) -> RowPrefetch:
    """Measure every candidate `rounds` times, alternating (`measure`: GB/s of int8 and int4 rows at those
    distances), keep the `best` on this CPU in `base`/row-prefetch.json and return it."""
    totals = {c: [0.0, 0.0] for c in CANDIDATES}
    for _ in range(rounds):
        for candidate in CANDIDATES:
            rate = measure(candidate)
            totals[candidate][0] += rate[0] / rounds
            totals[candidate][1] += rate[1] / rounds
            progress(f"rows {candidate.int8}/{candidate.int4} bytes ahead: int8 {rate[0]:.1f} GB/s, "
                     f"int4 {rate[1]:.1f} GB/s")
    choice = best({c: tuple(t) for c, t in totals.items()})
    base.mkdir(parents=True, exist_ok=True)
    record = {"cpu": cpu_name(), "int8": choice.int8, "int4": choice.int4,
              "measured_gb_s": {f"{c.int8},{c.int4}": [round(t[0], 2), round(t[1], 2)] for c, t in totals.items()}}
    partial = base / f".{SETTINGS}.{os.getpid()}"
    partial.write_text(json.dumps(record, indent=1) + "\n")
    partial.replace(base / SETTINGS)  # whole or not at all
    return choice


def probe(candidate: RowPrefetch, megabytes: int = 256) -> tuple[float, float]:
    """GB/s of int8 and int4 rows at `candidate`'s distances (`tools/row_prefetch_probe` in a fresh process, its
    kernels compiled into a folder of its own that is then deleted)."""
    with tempfile.TemporaryDirectory(prefix="moedge-row-prefetch-") as cache:
        env = {**os.environ, ENV: f"{candidate.int8},{candidate.int4}", "NUMBA_CACHE_DIR": cache,
               "NUMBA_NUM_THREADS": "1"}
        done = subprocess.run([sys.executable, "-m", "moedge.runtime.tools.row_prefetch_probe", "--megabytes",
                               str(megabytes)], env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"the row prefetch probe failed: {done.stderr.strip().splitlines()[-1:]}")
    rates = json.loads(done.stdout.strip().splitlines()[-1])
    return rates["int8"], rates["int4"]
