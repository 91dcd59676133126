"""The picture of a `moedge bench` report: latency per token, and where a token's time goes."""

from __future__ import annotations

from pathlib import Path


def plot_bench(report: dict, path: str | Path) -> None:
    """Write a PNG: per-token decode latency over the run (left), the per-part breakdown (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [2, 1]})
    for r in results:
        left.plot(r["latencies_ms"], lw=0.8, label=f"{r['threads']} thread(s): median {r['decode_ms_median']:.2f} ms")
        left.axhline(r["roofline_ms"], ls="--", lw=0.8, color=left.lines[-1].get_color())
    left.set(xlabel="decode step (after warm-up)", ylabel="ms / token",
             title=f"{Path(report['bundle']).name}: decode latency (dashed: roofline)")
    left.set_ylim(bottom=0)
    left.legend(fontsize=8)
    parts = list(results[0]["breakdown_ms"])
    bottom = [0.0] * len(results)
    labels = [f"{r['threads']}T" for r in results]
    for part in parts:
        values = [r["breakdown_ms"][part] for r in results]
        right.bar(labels, values, bottom=bottom, label=part)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    right.set(ylabel="ms / token", title="per-token breakdown")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
