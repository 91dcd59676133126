"""A `moedge bench` report as text."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..read_ahead_governor import FIRST_TRIAL_AFTER
from .bench import CAPPED_RUNS, PAIRED_PROBE_BYTES

MB = 1e6


def _cold_lines(cold: dict) -> list[str]:
    lines = []
    for label, run in cold.items():
        lines.append(f"    fresh process, {label.replace('_', ' ')}: first token {run['time_to_first_token_s']:.2f} s "
                     f"(python start and imports {run['startup_s']:.2f} + load {run['load_s']:.2f}"
                     f" + prefill {run['prefill_s']:.2f} + first decode {run['first_decode_s']:.2f})")
    warm = cold.get("numba_cache_warm")
    if warm:
        lines.append(f"    memory: peak RSS grew {warm['rss_growth'] / MB:.0f} MB over the pre-load RSS; dense "
                     f"{warm['dense_bytes'] / MB:.0f} MB + experts touched {warm['experts_bytes_touched'] / MB:.0f} MB"
                     f" = {(warm['dense_bytes'] + warm['experts_bytes_touched']) / MB:.0f} MB; experts resident "
                     f"after the run {warm['experts_resident_bytes'] / MB:.0f} MB")
    return lines


def _ways_note(ways: dict[str, float] | None) -> str:
    """' (the probe's best read each way: 1 stream 12.1, 4 streams, 1024 bytes ahead 14.4 GB/s)', or ''."""
    if not ways:
        return ""
    return " (the probe's best read each way: " + ", ".join(f"{k} {v:.1f}" for k, v in ways.items()) + " GB/s)"


def _paired_lines(paired: dict | None) -> list[str]:
    if not paired:
        return []
    rates = paired["bandwidth_gb_s"]
    return [f"    paired (one more run, a {PAIRED_PROBE_BYTES >> 20} MB probe read after every other token): decode "
            f"{np.median(paired['latencies_ms']):.2f} ms/token median, the probe {min(rates):.1f}-{max(rates):.1f} "
            f"GB/s (median {np.median(rates):.1f}) -> ratio to each token's own roofline "
            f"{paired['ratio_to_roofline']:.2f} (median); to the weights' alone "
            f"{paired['ratio_to_weights_roofline']:.2f}"]


def _prefetch_note(ahead: list[int] | None) -> str:
    """How far ahead the row dots prefetched (`runtime.row_prefetch`), for the header line."""
    return f", rows prefetched {ahead[0]} (int8) / {ahead[1]} (int4) bytes ahead" if ahead else ""


def _kv_note(kv: dict | None) -> str:
    """The KV cache's dtype and what a step reads of it (older reports have neither)."""
    if kv is None:
        return ""
    return f"; {kv['dtype']} KV cache, {kv['bytes_per_decode_step'] / MB:.1f} MB of it read per step on average"


def format_report(report: dict) -> str:
    """Several lines per thread count: latency, roofline ratio, breakdown, cold start, memory, peers; then the
    summary table."""
    step = report["bytes_per_decode_step"]
    lines = [f"{report['bundle']}: {step['weights'] / MB:.0f} MB of weights per decode step "
             f"(dense {step['dense'] / MB:.0f} MB, experts {step['experts'] / MB:.0f} MB); "
             f"prompt {report['prompt_tokens']}, {report['new_tokens']} new tokens x {report['repeat']}, "
             f"{report['token_stream']} tokens; integer row dots: {report.get('row_dots', 'portable')}"
             + _prefetch_note(report.get("row_prefetch_bytes")) + _kv_note(report.get("kv_cache"))]
    for r in report["results"]:
        b = r["breakdown_ms"]
        lines += [
            f"  {r['threads']} thread(s): decode {r['decode_ms_median']:.2f} ms/token median "
            f"(p90 {r['decode_ms_p90']:.2f}, p99 {r['decode_ms_p99']:.2f}), {r['tokens_per_s']:.1f} tokens/s; "
            f"prefill {r['prefill_tokens_per_s']:.0f} tokens/s",
            f"    roofline {r['roofline_ms']:.2f} ms ({step['total'] / MB:.0f} MB: the weights and the KV cache) at "
            f"{r['bandwidth_gb_s']:.1f} GB/s -> ratio to roofline {r['ratio_to_roofline']:.2f} (to the weights' "
            f"alone {r['ratio_to_weights_roofline']:.2f})" + _ways_note(r.get("bandwidth_ways_gb_s")),
            *_paired_lines(r.get("paired")),
            "    breakdown (one more run, part by part; median ms/token): "
            + ", ".join(f"{k} {v:.2f}" for k, v in b.items())
            + f"; Python between the kernels {100 * r['python_overhead_fraction']:.1f}% of that run",
            *_cold_lines(r.get("cold_start", {})),
        ]
    cap = report.get("memory_cap")
    if cap:
        lines.append(f"  under a {cap['limit_bytes'] / 2**20:.0f} MiB memory cgroup (page cache of the bundle dropped "
                     "first; fresh processes, first thread count):")
        for label in ("uncapped", *CAPPED_RUNS):
            run = cap.get(label)
            if run is None:
                continue
            name = label.replace("_", " ")
            if "killed" in run:
                lines.append(f"    {name}: {run['killed']}")
                continue
            recall = run.get("guess_recall")
            lines.append(f"    {name}: decode {run['decode_ms_median']:.2f} ms/token median "
                         f"({run['decode_ms_median'] / cap['uncapped'].get('decode_ms_median', float('nan')):.1f}x "
                         f"uncapped), {run['read_bytes_per_token'] / MB:.2f} MB read from storage per token, expert "
                         f"hit rate {100 * run['expert_hit_rate']:.1f}%, waiting for storage "
                         f"{run.get('read_wait_ms_per_token', 0.0):.2f} ms/token, peak RSS {run['rss_peak'] / MB:.0f} "
                         "MB"
                         + (f", read-ahead recall {100 * recall:.1f}% ({run['read_aheads_per_token']:.1f} experts "
                            "read ahead per token)" if recall is not None else "")
                         + _trials(run.get("read_ahead_decisions"))
                         + (f"; {run['budget_note']}" if run.get("budget_note") and label == "capped" else ""))
        lines += _hidden(cap.get("capped_no_read_ahead"), cap.get("capped_read_ahead"))
    for peer in report.get("peers", []):
        lines.append(f"  peer {peer['name']} ({peer['threads']} thread(s)): "
                     + (f"{peer['decode_ms_median']:.2f} ms/token, {peer['ratio_to_ours']:.2f}x ours"
                        if "decode_ms_median" in peer else f"not measured: {peer['skipped']}")
                     + (f"; prefill {peer['prefill_tokens_per_s']:.0f} tokens/s, "
                        f"{peer['prefill_ratio_to_ours']:.2f}x ours" if "prefill_tokens_per_s" in peer else ""))
    lines += _against_lines(report.get("against", []), report["bundle"])
    return "\n".join([*lines, "", summary_table(report)])


def _against_lines(results: list[dict], bundle: str) -> list[str]:
    """One line per thread count and bundle of `moedge bench --against` (`bench_against`)."""
    name = Path(bundle).name
    return [f"  against {r['bundle']} ({r['threads']} thread(s), decoded in turn with {name}): "
            f"{r['decode_ms_median']:.2f} ms/token median against {r['base_decode_ms_median']:.2f} -> {name} "
            f"{r['speedup']:.2f}x as fast (the median of per-token ratios; the medians' ratio "
            f"{r['speedup_of_medians']:.2f}x)" for r in results]


def _hidden(never: dict | None, always: dict | None) -> list[str]:
    """How much waiting for storage reading ahead always hid per token, and what it read to do it."""
    if not never or not always or "killed" in never or "killed" in always:
        return []
    hid = never["read_wait_ms_per_token"] - always["read_wait_ms_per_token"]
    more = (always["read_bytes_per_token"] - never["read_bytes_per_token"]) / MB
    return [f"    reading ahead always hid {hid:.2f} ms/token of waiting for storage and read {more:.2f} MB/token more"]


def _trials(decisions: list[bool] | None) -> str:
    """What the read-ahead governor's trials chose (a run with reading ahead on by default under a budget)."""
    if decisions is None:
        return ""
    if not decisions:
        return f"; reading ahead: not tried (the first trial comes after {FIRST_TRIAL_AFTER} steps)"
    return f"; reading ahead: {sum(decisions)} of {len(decisions)} trial(s) chose it"


def _rate(value: float, runs: list[float]) -> str:
    return f"{value:.1f} ± {np.std(runs):.1f}" if len(runs) > 1 else f"{value:.1f}"


def summary_table(report: dict) -> str:
    """A table like llama-bench's: prompt processing (ppN) and generation (tgN) tokens/s per thread count, ours
    (± the standard deviation over the runs) and the peers'."""
    name, size = Path(report["bundle"]).name, report.get("bundle_bytes", 0)
    weights, quant = report.get("weights", 0), report["quantization"]
    pp, tg = f"pp{report['prompt_tokens']}", f"tg{report['new_tokens']}"
    rows = []
    for r in report["results"]:
        runs = np.array_split(np.asarray(r["latencies_ms"]), report["repeat"])
        decode_runs = [1e3 / float(np.median(run)) for run in runs if run.size]
        rows += [("moedge", r["threads"], pp, _rate(r["prefill_tokens_per_s"], r.get("prefill_runs", []))),
                 ("moedge", r["threads"], tg, _rate(r["tokens_per_s"], decode_runs))]
    for peer in report.get("peers", []):
        if "prefill_tokens_per_s" in peer:
            rows.append((peer["name"], peer["threads"], pp, f"{peer['prefill_tokens_per_s']:.1f}"))
        if "decode_ms_median" in peer:
            rows.append((peer["name"], peer["threads"], tg, f"{1e3 / peer['decode_ms_median']:.1f}"))
    model = f"| {name} | {size / MB:.2f} MB | {weights / 1e6:.2f} M | {quant} |"
    lines = ["| bundle | size | weights | quant | backend | threads | test | t/s |",
             "| --- | ---: | ---: | --- | --- | ---: | ---: | ---: |"]
    lines += [f"{model} {backend} | {threads} | {test} | {rate} |" for backend, threads, test, rate in rows]
    return "\n".join(lines)
