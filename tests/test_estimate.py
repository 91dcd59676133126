"""`moedge bench --estimate`: the roofline of a bundle's decode step on boards we do not have, and the
expected latency with the ratio to roofline measured here."""

import json
import re

import pytest

from helpers import ROOT, run_cli, tiny_moe_spec
from moedge.runtime.bundle import read_manifest
from moedge.runtime.storage import step_bytes
from moedge.runtime.tools.estimate import BOARDS, CACHED_STEP_BYTES, boards, estimate, format_estimates

README = (ROOT / "README.md").read_text()


def test_the_roofline_is_the_step_bytes_over_the_board_bandwidth(exported):
    nbytes = step_bytes(read_manifest(exported("estimate", tiny_moe_spec()).bundle))["total"]
    pi5 = estimate(nbytes, BOARDS["pi5"], "pi5", ratio=2.5)
    assert pi5.basis == "peak" and pi5.bandwidth_gb_s == 17.1
    assert pi5.roofline_ms == pytest.approx(nbytes / 17.1e9 * 1e3, rel=1e-12)
    assert pi5.expected_ms == pytest.approx(2.5 * pi5.roofline_ms, rel=1e-12)
    assert pi5.peer_ms == pytest.approx(nbytes / 10.0e9 * 1e3, rel=1e-12)
    pi4 = estimate(nbytes, BOARDS["pi4"], "pi4", ratio=None)  # a measured figure is used where one is published
    assert pi4.basis == "measured" and pi4.roofline_ms == pytest.approx(nbytes / 5.56e9 * 1e3, rel=1e-12)
    assert pi4.expected_ms is None
    assert estimate(nbytes, BOARDS["phone"], "phone", 1.0).peer_ms is None


def test_the_table_is_labelled_an_estimate_and_says_when_a_step_fits_in_cache():
    text = format_estimates(200 << 20, 1.5, "1 thread(s), measured just now", boards("all"))
    lines = text.splitlines()
    assert lines[0].startswith("ESTIMATE (not measured on these boards): 209.72 MB") and "x 1.50" in lines[0]
    assert [line.split(":")[0].strip() for line in lines[1:]] == [b.label for b in BOARDS.values()]
    assert "note" not in text
    assert "roofline 12.3 ms/token (82 tokens/s), expected 18.4 ms/token" in text  # 209.7 MB at 17.1 GB/s, x 1.5
    small = format_estimates(CACHED_STEP_BYTES - 1, None, "", ["pi5"])
    assert "no expected latency" in small and "expected" not in small.splitlines()[1]
    assert "can stay in a CPU's caches" in small.splitlines()[-1]


def test_every_board_and_its_source_is_in_the_readme():
    section = README.split("## Running on a Raspberry Pi")[1]
    for board in BOARDS.values():
        assert board.label in section and board.source in section, board.label
        assert f"{board.peak_gb_s:g} GB/s" in section, board.label


def test_bench_estimate_scales_the_roofline_by_the_ratio_measured_here(exported, tmp_path):
    bundle = exported("estimate", tiny_moe_spec()).bundle
    result = run_cli("bench", bundle, "--threads", "1", "--prompt-tokens", "8", "--new-tokens", "6", "--repeat", "1",
                     "--no-cold-start", "--estimate", "pi5", "--json", tmp_path / "r.json", timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    ratio, nbytes = report["results"][0]["paired"]["ratio_to_roofline"], report["bytes_per_decode_step"]["total"]
    (line,) = [line for line in result.stdout.splitlines() if BOARDS["pi5"].label in line]
    roofline, expected = (float(v) for v in re.search(r"roofline ([\d.e-]+) ms/token.*expected ([\d.e-]+) ms", line)
                          .groups())
    assert roofline == pytest.approx(nbytes / 17.1e9 * 1e3, rel=5e-3)
    assert expected == pytest.approx(ratio * nbytes / 17.1e9 * 1e3, rel=5e-3)
    assert f"x {ratio:.2f}, this machine's ratio to roofline (paired, 1 thread(s)" in result.stdout


def test_an_unknown_board_is_a_one_line_error(exported):
    result = run_cli("bench", exported("estimate", tiny_moe_spec()).bundle, "--estimate", "pi9")
    assert result.returncode == 2 and "argument --estimate: invalid choice: 'pi9'" in result.stderr
    assert result.stderr.strip().count("\n") == 0
