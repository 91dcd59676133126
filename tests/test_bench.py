"""`moedge bench` on a tiny bundle: it runs end to end and its JSON has every field."""

import json

from helpers import run_cli, tiny_moe_spec

RESULT_FIELDS = {"threads", "decode_ms_median", "decode_ms_p90", "decode_ms_p99", "tokens_per_s",
                 "prefill_tokens_per_s", "breakdown_ms", "bandwidth_gb_s", "roofline_ms", "ratio_to_roofline",
                 "python_overhead_fraction", "latencies_ms", "cold_start"}
COLD_FIELDS = {"time_to_first_token_s", "startup_s", "load_s", "prefill_s", "first_decode_s", "rss_before_load",
               "rss_peak", "rss_growth", "dense_bytes", "experts_bytes_touched", "experts_resident_bytes"}


def test_bench_json_plot_and_peers(exported, tmp_path):
    case = exported("bench", tiny_moe_spec())
    report_path, plot_path = tmp_path / "bench.json", tmp_path / "bench.png"
    result = run_cli("bench", case.bundle, "--threads", "1", "--prompt-tokens", "16", "--new-tokens", "12",
                     "--repeat", "2", "--peers", "--json", report_path, "--plot", plot_path, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "ratio to roofline" in result.stdout and "peer pytorch-eager" in result.stdout
    report = json.loads(report_path.read_text())
    assert report["token_stream"] == "seeded random"
    step = report["bytes_per_decode_step"]
    assert step["experts"] > 0 and step["total"] == step["dense"] + step["experts"]
    (r,) = report["results"]
    assert set(r) >= RESULT_FIELDS
    assert set(r["breakdown_ms"]) == {"dense", "routing", "experts", "head", "other"}
    assert len(r["latencies_ms"]) == 2 * (12 - 4) and r["decode_ms_median"] > 0 and r["bandwidth_gb_s"] > 0
    assert {"numba_cache_cold", "numba_cache_warm"} == set(r["cold_start"])
    for run in r["cold_start"].values():
        assert set(run) >= COLD_FIELDS and run["time_to_first_token_s"] > run["load_s"] > 0
    assert {p["name"] for p in report["peers"]} == {"onnxruntime-full-graph", "pytorch-eager", "llama.cpp-q8_0"}
    for peer in report["peers"]:  # llama.cpp is measured if `make peers` installed it, else says why not
        assert peer["decode_ms_median"] > 0 if "skipped" not in peer else "make peers" in peer["skipped"]
    llama = next(p for p in report["peers"] if p["name"] == "llama.cpp-q8_0")
    assert "skipped" in llama or llama["prefill_tokens_per_s"] > 0 < llama["prefill_ratio_to_ours"]
    assert plot_path.stat().st_size > 10_000
