"""The README's benchmark table from `moedge bench --json` reports.

    python samples/bench_table.py build/results/*.json

One row per bundle and thread count: our decode latency (median, p90), tokens/s, prefill speed,
the roofline (the weights and KV cache a step reads / measured read bandwidth) and our ratio to it (and
the paired run's, each token against a probe read right after it: `moedge bench`), time to first
token in a fresh process (numba cache warm), memory growth against dense + touched experts, and
each peer's latency as a multiple of ours (and llama.cpp's prefill speed as a multiple of ours).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HEADER = ("| model | threads | decode ms/token (p90) | tokens/s | prefill tok/s | weights/step | roofline ms "
          "| ratio to roofline | first token (warm) | RSS growth / (dense + touched) | ORT full graph | PyTorch eager "
          "| llama.cpp decode, prefill (same weights) |")
HEADER_RULE = "|" + "---|" * (HEADER.count("|") - 1)


def _peer(report: dict, name: str, threads: int) -> str:
    for peer in report.get("peers", []):
        if peer["name"].startswith(name) and peer["threads"] == threads and "decode_ms_median" in peer:
            kind = peer["name"].removeprefix(name).lstrip("-").upper()
            cell = (f"{kind}: " if kind else "") + f"{peer['decode_ms_median']:.1f} ms ({peer['ratio_to_ours']:.2f}x)"
            if "prefill_tokens_per_s" in peer:
                cell += f", {peer['prefill_tokens_per_s']:.0f} tok/s ({peer['prefill_ratio_to_ours']:.2f}x)"
            return cell
    return "—"


def rows(report: dict) -> list[str]:
    """Markdown rows for one report."""
    out = []
    name = Path(report["bundle"]).name.removesuffix(".moedge")
    per_step = report["bytes_per_decode_step"]
    weights = per_step.get("weights", per_step["total"]) / 1e6  # reports before session 15: the total is the weights
    for r in report["results"]:
        warm = r.get("cold_start", {}).get("numba_cache_warm")
        first = f"{warm['time_to_first_token_s']:.2f} s" if warm else "—"
        memory = (f"{warm['rss_growth'] / (warm['dense_bytes'] + warm['experts_bytes_touched']):.2f}"
                  if warm else "—")
        paired = r.get("paired")  # reports before session 8 have none
        ratio = f"{r['ratio_to_roofline']:.2f}" + (f" (paired {paired['ratio_to_roofline']:.2f})" if paired else "")
        out.append(f"| {name} | {r['threads']} | {r['decode_ms_median']:.1f} ({r['decode_ms_p90']:.1f}) "
                   f"| {r['tokens_per_s']:.1f} | {r['prefill_tokens_per_s']:.0f} | {weights:.0f} MB "
                   f"| {r['roofline_ms']:.1f} | {ratio} | {first} | {memory} "
                   f"| {_peer(report, 'onnxruntime-full-graph', r['threads'])} "
                   f"| {_peer(report, 'pytorch-eager', r['threads'])} "
                   f"| {_peer(report, 'llama.cpp', r['threads'])} |")
    return out


def main(paths: list[str]) -> str:
    table = "\n".join([HEADER, HEADER_RULE] + [row for p in paths for row in rows(json.loads(Path(p).read_text()))])
    print(table)
    return table


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+")
    main(parser.parse_args().reports)
