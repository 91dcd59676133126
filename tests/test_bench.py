"""`moedge bench` on a tiny bundle: it runs end to end and its JSON has every field."""

import json

import numpy as np
import pytest

from helpers import run_cli, tiny_moe_spec
from moedge.runtime.bundle import read_manifest
from moedge.runtime.kernel_vnni import VNNI
from moedge.runtime.memory import RESERVE
from moedge.runtime.numba_cache import ROW_PREFETCH
from moedge.runtime.storage import step_bytes
from moedge.runtime.tools.bandwidth import WAYS, way_name

RESULT_FIELDS = {"threads", "decode_ms_median", "decode_ms_p90", "decode_ms_p99", "tokens_per_s",
                 "prefill_tokens_per_s", "breakdown_ms", "bandwidth_gb_s", "roofline_ms", "ratio_to_roofline",
                 "ratio_to_weights_roofline", "python_overhead_fraction", "latencies_ms", "prefill_runs", "cold_start",
                 "paired", "bandwidth_ways_gb_s"}
COLD_FIELDS = {"time_to_first_token_s", "startup_s", "load_s", "prefill_s", "first_decode_s", "rss_before_load",
               "rss_peak", "rss_growth", "dense_bytes", "experts_bytes_touched", "experts_resident_bytes"}


def test_bench_json_plot_and_peers(exported, tmp_path):
    """(A float16 KV cache on a bundle whose default is float32: the flag reaches every run, the fresh processes'
    too.)"""
    case = exported("bench", tiny_moe_spec())
    report_path, plot_path = tmp_path / "bench.json", tmp_path / "bench.png"
    result = run_cli("bench", case.bundle, "--threads", "1", "--prompt-tokens", "16", "--new-tokens", "12",
                     "--repeat", "2", "--peers", "--json", report_path, "--plot", plot_path, "--kv-cache", "float16",
                     timeout=600)
    assert result.returncode == 0, result.stderr
    assert "ratio to roofline" in result.stdout and "peer pytorch-eager" in result.stdout
    table = result.stdout.split("\n\n")[-1].splitlines()  # the summary table comes last
    assert table[0] == "| bundle | size | weights | quant | backend | threads | test | t/s |"
    assert [row.split(" | ")[4:7] for row in table[2:4]] == [["moedge", "1", "pp16"], ["moedge", "1", "tg12"]]
    assert any(" pytorch-eager | 1 | tg12 | " in row for row in table)
    report = json.loads(report_path.read_text())
    assert report["token_stream"] == "seeded random"
    assert report["row_dots"] == ("avx512-vnni" if VNNI else "portable")
    assert f"integer row dots: {report['row_dots']}" in result.stdout
    assert report["row_prefetch_bytes"] == list(ROW_PREFETCH)
    assert f"rows prefetched {ROW_PREFETCH.int8} (int8) / {ROW_PREFETCH.int4} (int4) bytes ahead" in result.stdout
    step = report["bytes_per_decode_step"]
    assert step["experts"] > 0 and step["weights"] == step["dense"] + step["experts"]
    assert step["weights"] == step_bytes(read_manifest(case.bundle))["total"]
    spec = case.spec  # keys and values of 16 + 12 / 2 cached rows on average, two bytes each
    row = 2 * spec.n_layers * spec.n_kv_heads * spec.head_dim * 2
    assert report["kv_cache"] == {"dtype": "float16", "bytes_per_decode_step": row * (16 + 6)}
    assert step["kv_cache"] == row * (16 + 6) and step["total"] == step["weights"] + step["kv_cache"]
    assert "float16 KV cache, " in result.stdout.splitlines()[0]
    (r,) = report["results"]
    assert set(r) >= RESULT_FIELDS
    assert set(r["breakdown_ms"]) == {"dense", "routing", "experts", "head", "other"}
    assert len(r["latencies_ms"]) == 2 * (12 - 4) and r["decode_ms_median"] > 0 and r["bandwidth_gb_s"] > 0
    assert set(r["bandwidth_ways_gb_s"]) == {way_name(way) for way in WAYS}  # the roofline: the fastest way
    assert r["bandwidth_gb_s"] == max(r["bandwidth_ways_gb_s"].values())
    # the roofline: the weights and the KV cache a step reads, at the probe's best read
    assert r["roofline_ms"] == pytest.approx(step["total"] / (r["bandwidth_gb_s"] * 1e9) * 1e3, rel=1e-9)
    assert r["ratio_to_roofline"] == pytest.approx(r["decode_ms_median"] / r["roofline_ms"], rel=1e-9)
    assert r["ratio_to_weights_roofline"] == pytest.approx(r["ratio_to_roofline"] * step["total"] / step["weights"],
                                                           rel=1e-9)
    assert f"ratio to roofline {r['ratio_to_roofline']:.2f} (to the weights' alone " in result.stdout
    assert f"(the probe's best read each way: 1 stream {r['bandwidth_ways_gb_s']['1 stream']:.1f}" in result.stdout
    paired = r["paired"]  # tokens 4, 6, 8 and 10 of one more run, each with a probe read after it
    assert len(paired["latencies_ms"]) == len(paired["bandwidth_gb_s"]) == 4 and paired["ratio_to_roofline"] > 0
    assert f"ratio to each token's own roofline {paired['ratio_to_roofline']:.2f}" in result.stdout
    each = np.array(paired["latencies_ms"]) * 1e-3 * np.array(paired["bandwidth_gb_s"]) * 1e9
    assert paired["ratio_to_roofline"] == pytest.approx(float(np.median(each / step["total"])), rel=1e-9)
    assert paired["ratio_to_weights_roofline"] == pytest.approx(float(np.median(each / step["weights"])), rel=1e-9)
    assert {"numba_cache_cold", "numba_cache_warm"} == set(r["cold_start"])
    for run in r["cold_start"].values():
        assert set(run) >= COLD_FIELDS and run["time_to_first_token_s"] > run["load_s"] > 0
        assert run["kv_cache"] == "float16"
    assert {p["name"] for p in report["peers"]} == {"onnxruntime-full-graph", "pytorch-eager", "llama.cpp-q8_0"}
    for peer in report["peers"]:  # llama.cpp is measured if `make peers` installed it, else says why not
        assert peer["decode_ms_median"] > 0 if "skipped" not in peer else "make peers" in peer["skipped"]
    llama = next(p for p in report["peers"] if p["name"] == "llama.cpp-q8_0")
    assert "skipped" in llama or llama["prefill_tokens_per_s"] > 0 < llama["prefill_ratio_to_ours"]
    assert plot_path.stat().st_size > 10_000


def _capped(bundle, limit: str, report_path):
    return run_cli("bench", bundle, "--threads", "1", "--prompt-tokens", "16", "--new-tokens", "16", "--repeat", "1",
                   "--no-cold", "--memory-limit", limit, "--json", report_path, timeout=600)


def test_bench_under_a_memory_cap(exported, tmp_path):
    """The capped child runs inside the cgroup (it sees the cgroup's limit as its memory). A first run under
    a roomy cap measures what the process holds before loading; a second cap leaves room for half the
    experts, so the runtime budgets them itself and reads them from storage again. Where no cgroup can be
    made, a one-line error says why."""
    case = exported("bench-cap", tiny_moe_spec(expert_intermediate_size=4096))  # 25 MB of experts
    roomy = _capped(case.bundle, "4G", tmp_path / "roomy.json")
    if roomy.returncode == 2:
        assert "cannot create a memory cgroup" in roomy.stderr and roomy.stderr.strip().count("\n") == 0
        return
    assert roomy.returncode == 0, roomy.stderr
    first = json.loads((tmp_path / "roomy.json").read_text())["memory_cap"]
    free = first["capped"]
    assert "cgroup" in free["memory_available_at_load"]["source"] and free["budget_note"] is None
    assert first["uncapped"]["memory_available_at_load"]["source"] == "MemAvailable"
    experts = (case.bundle / "experts.bin").stat().st_size
    used = (4 << 30) - free["memory_available_at_load"]["bytes"]  # charged to the cgroup before the load
    limit = used + step_bytes(read_manifest(case.bundle))["dense"] + RESERVE + experts // 2
    tight = _capped(case.bundle, str(limit), tmp_path / "tight.json")
    assert tight.returncode == 0, tight.stderr
    runs = json.loads((tmp_path / "tight.json").read_text())["memory_cap"]
    capped = runs["capped"]
    assert capped["budget_note"] and "memory cgroup" in capped["budget_note"]
    # by default reading ahead is tried (the budget holds two layers' experts), but not in the first 64 steps; the
    # runs beside it turn it off and on
    assert capped["read_ahead_decisions"] == [] and capped["read_aheads_per_token"] == 0
    never, ahead = runs["capped_no_read_ahead"], runs["capped_read_ahead"]
    assert never["guess_recall"] is None and never["read_aheads_per_token"] == 0
    assert never["read_ahead_decisions"] is None is ahead["read_ahead_decisions"]
    assert 0.0 <= ahead["guess_recall"] <= 1.0 and ahead["read_aheads_per_token"] > 0
    assert "reading ahead: not tried" in tight.stdout and "capped no read ahead" in tight.stdout
    assert runs["uncapped"]["read_wait_ms_per_token"] == 0 <= never["read_wait_ms_per_token"]
    assert "waiting for storage" in tight.stdout and "reading ahead always hid" in tight.stdout
    assert 0 < capped["expert_budget_bytes"] < experts
    assert capped["expert_hit_rate"] < free["expert_hit_rate"] and capped["read_bytes_per_token"] > 0
    assert "memory cgroup" in tight.stdout
    too_long = run_cli("bench", case.bundle, "--prompt-tokens", "90", "--new-tokens", "16", "--no-cold")
    assert too_long.returncode == 2 and "exceed the model's context of 96" in too_long.stderr


class FakeClock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


class ScheduledSession:
    """Advances the fake clock by each part's scheduled time and tells the probe, as `forward` does."""

    def __init__(self, clock: FakeClock, probe, schedule):
        self.clock, self.probe, self.schedule, self.step = clock, probe, schedule, 0

    def prefill(self, tokens, last_only=False):
        self.clock.now += 0.01 * len(tokens)

    def decode(self, token):
        for part, seconds in self.schedule(self.step).items():
            self.clock.now += seconds
            self.probe.lap(part)
        self.step += 1


def test_the_breakdown_is_the_median_of_each_part(monkeypatch):
    """One slow step (a page fault) moves a mean but not the median, which is what the latency reports. The
    latencies come from runs without a probe (a step in one call, here 0.3 ms faster), the parts from one more
    run part by part under the probe."""
    import time
    from types import SimpleNamespace

    from tqdm import tqdm

    from moedge.runtime.forward import SILENT
    from moedge.runtime.tools.bench import WARMUP_TOKENS, measure_decode

    clock = FakeClock()
    monkeypatch.setattr(time, "perf_counter", clock)

    def schedule(step, parted):
        return {"dense": 0.100 if step == WARMUP_TOKENS + 2 else 0.001 if parted else 0.0007, "routing": 0.0001,
                "experts": 0.002, "head": 0.0005}
    sessions = []

    def session(probe=SILENT):
        sessions.append(probe)
        return ScheduledSession(clock, probe, lambda step: schedule(step, probe is not SILENT))
    model = SimpleNamespace(spec=SimpleNamespace(vocab_size=50), session=session)
    latencies, prefill_runs, parts, paired = measure_decode(model, 10, WARMUP_TOKENS + 6, 2, 0, tqdm(disable=True))
    assert paired == []  # no probe read given: no paired run
    assert sessions[:2] == [SILENT, SILENT] and len(sessions) == 3 and sessions[2] is not SILENT
    assert len(latencies) == 12 and prefill_runs == pytest.approx([100.0, 100.0])
    assert parts == pytest.approx({"dense": 0.001, "routing": 0.0001, "experts": 0.002, "head": 0.0005,
                                   "other": 0.0}, abs=1e-9)
    assert float(np.median(latencies)) == pytest.approx(sum(parts.values()) - 0.0003)


def test_the_paired_ratio_takes_each_token_with_its_own_bandwidth(monkeypatch):
    """The machine's bandwidth moves from one token to the next (40, 20, 30 GB/s, again and again), and a token
    decodes in proportion: at its own moment's rate every token is 1.25x its roofline, while against the best
    rate (what a best-of probe reads) the tokens look slower. The paired run times every other token (the others
    start after the probe's read), reads the probe right after it, and its ratio is the median of the tokens'
    own (one slow token does not move it): a token paired with another's read, or a read taken before the token,
    gives another ratio."""
    import time
    from types import SimpleNamespace

    from tqdm import tqdm

    from moedge.runtime.forward import SILENT
    from moedge.runtime.tools.bench import WARMUP_TOKENS, measure_decode, paired_ratio

    clock = FakeClock()
    monkeypatch.setattr(time, "perf_counter", clock)
    step_bytes = 40e6
    rate = [40.0, 20.0, 30.0]  # GB/s of the machine while step s runs: rate[s % 3]
    sessions = []

    def session(probe=SILENT):
        sessions.append(ScheduledSession(clock, probe, lambda step: {
            "experts": (10 if step == 8 else 1) * 1.25 * step_bytes / (rate[step % 3] * 1e9)}))  # 8: a page fault
        return sessions[-1]

    def probe_read():
        return rate[(sessions[-1].step - 1) % 3]  # the rate of the step just ended
    model = SimpleNamespace(spec=SimpleNamespace(vocab_size=50), session=session)
    runs = measure_decode(model, 10, WARMUP_TOKENS + 8, 1, 0, tqdm(disable=True), probe_read)
    assert len(sessions) == 3 and len(runs.latencies) == 8 and len(runs.paired) == 4  # tokens 4, 6, 8 and 10
    assert [bandwidth for _, bandwidth in runs.paired] == [rate[i % 3] for i in (4, 6, 8, 10)]
    assert paired_ratio(runs.paired, step_bytes) == pytest.approx(1.25)
    assert float(np.median(runs.latencies)) * max(rate) * 1e9 / step_bytes == pytest.approx(1.25 * (4 / 3 + 2) / 2)


def test_summary_table_rates_and_spread():
    from moedge.runtime.tools.bench_report import summary_table

    report = {"bundle": "/x/m.moedge", "bundle_bytes": 6_840_000, "weights": 4_860_000, "quantization": "int8",
              "prompt_tokens": 64, "new_tokens": 32, "repeat": 2,
              "results": [{"threads": 2, "prefill_tokens_per_s": 150.0, "prefill_runs": [100.0, 200.0],
                           "tokens_per_s": 400.0, "latencies_ms": [2.0, 2.0, 2.0, 4.0, 4.0, 4.0]}],
              "peers": [{"name": "llama.cpp-q8_0", "threads": 2, "decode_ms_median": 2.0,
                         "prefill_tokens_per_s": 300.0},
                        {"name": "pytorch-eager", "threads": 2, "skipped": "no torch"}]}
    rows = summary_table(report).splitlines()[2:]
    assert rows == ["| m.moedge | 6.84 MB | 4.86 M | int8 | moedge | 2 | pp64 | 150.0 ± 50.0 |",
                    "| m.moedge | 6.84 MB | 4.86 M | int8 | moedge | 2 | tg32 | 400.0 ± 125.0 |",  # runs: 500, 250
                    "| m.moedge | 6.84 MB | 4.86 M | int8 | llama.cpp-q8_0 | 2 | pp64 | 300.0 |",
                    "| m.moedge | 6.84 MB | 4.86 M | int8 | llama.cpp-q8_0 | 2 | tg32 | 500.0 |"]


def test_the_latency_axis_shows_the_roofline_and_every_step():
    from moedge.runtime.tools.bench_plot import latency_range

    low, high = latency_range([{"latencies_ms": [0.3, 0.3, 12.0], "roofline_ms": 0.1},
                               {"latencies_ms": [0.5, 15.0], "roofline_ms": 0.2}])
    assert low < 0.1 and high > 15.0


def test_the_report_says_what_the_read_ahead_trials_chose():
    from moedge.runtime.tools.bench_report import _trials

    assert _trials(None) == ""  # reading ahead fixed on or off
    assert _trials([]) == "; reading ahead: not tried (the first trial comes after 64 steps)"
    assert _trials([False, True, True]) == "; reading ahead: 2 of 3 trial(s) chose it"


def test_the_report_says_what_reading_ahead_hid():
    from moedge.runtime.tools.bench_report import _hidden

    never = {"read_wait_ms_per_token": 30.0, "read_bytes_per_token": 40e6}
    always = {"read_wait_ms_per_token": 34.5, "read_bytes_per_token": 60e6}
    assert _hidden(never, always) == ["    reading ahead always hid -4.50 ms/token of waiting for storage and read "
                                      "20.00 MB/token more"]
    assert _hidden(never, {"killed": "..."}) == [] and _hidden(None, always) == []
