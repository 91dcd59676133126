"""The row dots' prefetch distances: measured per machine, kept per CPU, compiled into the kernels, never a change
in what they compute."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from moedge.runtime import InputError
from moedge.runtime import row_prefetch as rp
from moedge.runtime.numba_cache import kernel_cache_dir
from moedge.runtime.row_prefetch import CANDIDATES, DEFAULT, ENV, RowPrefetch


def test_the_override_is_two_byte_counts_or_a_one_line_error():
    assert rp.parse("2048,1024") == RowPrefetch(2048, 1024)
    for bad in ("2048", "a,b", "2048,100", "-64,64", "131072,64", "64,64,64"):
        with pytest.raises(InputError, match=ENV):
            rp.parse(bad)


def test_the_override_wins_then_this_cpus_measurement_then_the_default(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert rp.chosen(tmp_path) == DEFAULT
    settings = tmp_path / rp.SETTINGS
    settings.write_text(json.dumps({"cpu": rp.cpu_name(), "int8": 1024, "int4": 2048}))
    assert rp.chosen(tmp_path) == RowPrefetch(1024, 2048)
    monkeypatch.setenv(ENV, "256,128")
    assert rp.chosen(tmp_path) == RowPrefetch(256, 128)
    monkeypatch.delenv(ENV)
    settings.write_text(json.dumps({"cpu": "another CPU", "int8": 1024, "int4": 2048}))
    assert rp.chosen(tmp_path) == DEFAULT  # measured on another machine
    for corrupt in ("{", json.dumps({"cpu": rp.cpu_name(), "int8": 100, "int4": 64}), "[]"):
        settings.write_text(corrupt)
        assert rp.chosen(tmp_path) == DEFAULT


def test_a_candidate_replaces_the_default_only_when_clearly_faster_each_kind_apart():
    near, far = CANDIDATES[1], CANDIDATES[2]
    rates = {DEFAULT: (15.0, 14.0), near: (15.3, 15.0), far: (15.2, 16.0)}
    assert rp.best(rates) == RowPrefetch(DEFAULT.int8, far.int4)  # int8 +2%: within the margin
    rates[near] = (15.0 * (1 + rp.MARGIN) + 0.01, 15.0)
    assert rp.best(rates) == RowPrefetch(near.int8, far.int4)
    assert rp.best({c: (10.0, 10.0) for c in CANDIDATES}) == DEFAULT


def test_calibration_alternates_the_candidates_and_keeps_its_choice_for_this_cpu(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    order = []
    speed = {DEFAULT: (10.0, 9.0), CANDIDATES[1]: (11.0, 9.1), CANDIDATES[2]: (10.5, 12.0)}

    def measure(candidate):
        order.append(candidate)
        return speed[candidate]

    choice = rp.calibrate(tmp_path, measure, rounds=2)
    assert order == list(CANDIDATES) * 2
    assert choice == RowPrefetch(CANDIDATES[1].int8, CANDIDATES[2].int4)
    assert rp.measured(tmp_path) == choice == rp.chosen(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [rp.SETTINGS]  # no partial file left


def test_the_kernel_cache_folder_follows_the_distances():
    assert kernel_cache_dir(DEFAULT) == kernel_cache_dir(RowPrefetch(*DEFAULT))
    assert kernel_cache_dir(DEFAULT) != kernel_cache_dir(RowPrefetch(DEFAULT.int8, 2048))
    assert kernel_cache_dir(DEFAULT) != kernel_cache_dir(RowPrefetch(2048, DEFAULT.int4))


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="reads x86 prefetch instructions")
def test_the_distances_are_compiled_into_the_row_dots(tmp_path):
    """In a fresh process with unusual distances, the compiled int8 and int4 row loops prefetch that far ahead."""
    script = """
import re
import numpy as np
from moedge.runtime.kernels import INT8_ACTIVATIONS
from moedge.runtime.tools.row_prefetch_probe import gemv, matrices
rng = np.random.default_rng(0)
for layout in ("int8", "int4 g128"):
    codes, scales = matrices(layout, 64, 256, 0, rng)
    gemv(codes, scales, rng.standard_normal(256).astype(np.float32), INT8_ACTIVATIONS,
         np.empty(codes.shape[:2], np.float32), 1)
print(sorted({int(d) for d in re.findall(r"prefetcht0\\s+(\\d+)\\(", "".join(gemv.inspect_asm().values()))}))
"""
    env = {**os.environ, ENV: "1984,1472", "NUMBA_CACHE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.split("\n")[-2] == "[1472, 1984]"


def test_the_probe_computes_the_same_products_at_every_distance(tmp_path):
    """A prefetch is a hint: two distances, the same checksum of the products, and rates that are rates."""
    rates = []
    for candidate in (DEFAULT, CANDIDATES[2]):
        env = {**os.environ, ENV: "{},{}".format(*candidate), "NUMBA_CACHE_DIR": str(tmp_path)}
        done = subprocess.run([sys.executable, "-m", "moedge.runtime.tools.row_prefetch_probe", "--megabytes", "4",
                               "--repeat", "1"], env=env, capture_output=True, text=True, check=True)
        rates.append(json.loads(done.stdout))
    assert rates[0]["checksum"] == rates[1]["checksum"] != 0.0
    assert all(r["int8"] > 0.1 and r["int4"] > 0.1 for r in rates)


def test_warmup_measures_once_and_compiles_afresh_only_when_the_choice_changed(tmp_path, monkeypatch, capsys):
    """`moedge warmup` (no BUNDLEs): with no measurement for this CPU it calibrates; a choice other than the one
    this process's kernels were set up with is compiled by a fresh process; measured already, it goes on."""
    from moedge.cli import commands
    from moedge.runtime import numba_cache

    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setattr(numba_cache, "cache_base", lambda: tmp_path)
    spawned = []
    monkeypatch.setattr(subprocess, "run",
                        lambda argv, **_: spawned.append(argv) or subprocess.CompletedProcess(argv, 0))
    faster = {c: (10.0, 20.0 if c == CANDIDATES[2] else 10.0) for c in CANDIDATES}
    monkeypatch.setattr(rp, "probe", lambda candidate: faster[candidate])
    monkeypatch.setattr(numba_cache, "ROW_PREFETCH", DEFAULT)
    assert commands._measure_row_prefetch(quiet=False) is True
    assert rp.measured(tmp_path) == RowPrefetch(DEFAULT.int8, CANDIDATES[2].int4)
    assert len(spawned) == 1 and "main(['warmup'])" in spawned[0][-1]
    assert "kept: int8 rows 512 bytes ahead, int4 rows 2048" in capsys.readouterr().out
    assert commands._measure_row_prefetch(quiet=True) is False  # measured: nothing more
    (tmp_path / rp.SETTINGS).unlink()
    faster = {c: (10.0, 10.0) for c in CANDIDATES}
    assert commands._measure_row_prefetch(quiet=True) is False  # the default kept: this process compiles it
    assert len(spawned) == 1


def test_warmup_goes_on_with_the_defaults_when_the_probe_fails(tmp_path, monkeypatch, capsys):
    from moedge.cli import commands
    from moedge.runtime import numba_cache

    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setattr(numba_cache, "cache_base", lambda: tmp_path)

    def fails(candidate):
        raise RuntimeError("the row prefetch probe failed: ['MemoryError']")

    monkeypatch.setattr(rp, "probe", fails)
    assert commands._measure_row_prefetch(quiet=True) is False
    assert "could not measure them (the row prefetch probe failed" in capsys.readouterr().err
    assert rp.measured(tmp_path) is None  # measured again next time
