"""The picture of a `moedge bench` report: latency per token, and where a token's time goes.

The latency axis is logarithmic, so outliers (a page fault, the other engineers' work on a shared machine) do
not flatten the curves, and the roofline (a solid line per thread count) stays visible however far below
it sits. The breakdown is the median of each part (the report's statistic); the median decode latency is
marked on each bar.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def latency_range(results: list[dict]) -> tuple[float, float]:
    """The latency axis: from below the lowest latency or roofline to above the highest latency."""
    low = min(min(min(r["latencies_ms"]), r["roofline_ms"]) for r in results)
    high = max(max(max(r["latencies_ms"]), r["roofline_ms"]) for r in results)
    return low / 1.25, high * 1.25


def plot_bench(report: dict, path: str | Path) -> None:
    """Write a PNG: per-token decode latency over the run with the roofline (left), the median per-part
    breakdown (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [2, 1]})
    for r in results:
        line, = left.plot(r["latencies_ms"], lw=0.8,
                          label=f"{r['threads']} thread(s): median {r['decode_ms_median']:.2f} ms")
        left.axhline(r["roofline_ms"], lw=1.8, color=line.get_color(), alpha=0.8,
                     label=f"roofline {r['threads']}T: {r['roofline_ms']:.2f} ms")
    left.set(xlabel="decode step (after warm-up)", ylabel="ms / token (log scale)", yscale="log",
             ylim=latency_range(results), title=f"{Path(report['bundle']).name}: decode latency and roofline")
    left.legend(fontsize=8)
    labels = [f"{r['threads']}T" for r in results]
    bottom = np.zeros(len(results))
    for part in results[0]["breakdown_ms"]:
        values = np.array([r["breakdown_ms"][part] for r in results])
        right.bar(labels, values, bottom=bottom, label=part)
        bottom += values
    right.scatter(labels, [r["decode_ms_median"] for r in results], marker="_", s=900, color="black", zorder=3,
                  label="median decode")
    right.set(ylabel="ms / token", title="per-token breakdown (median of each part)")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
