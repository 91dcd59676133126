"""Images for `moedge eval`: the expert-usage heatmap (needs matplotlib, imported lazily)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def usage_heatmap(usage: np.ndarray, layers: list[int], cv: np.ndarray, path: str | Path, title: str) -> None:
    """Write a heatmap of the share of routed tokens each expert got, one row per MoE layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    share = usage / np.maximum(usage.sum(axis=1, keepdims=True), 1)  # [L, E]
    n_layers, n_experts = share.shape
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * n_experts, 1.4 + 0.55 * n_layers), dpi=110)
    image = ax.imshow(share, cmap="viridis", vmin=0, aspect="auto")
    for (row, col), value in np.ndenumerate(share):
        ax.text(col, row, f"{100 * value:.0f}", ha="center", va="center", fontsize=8,
                color="white" if value < 0.6 * share.max() else "black")
    ax.set_xticks(range(n_experts))
    ax.set_yticks(range(n_layers), [f"layer {i}  (cv {c:.2f})" for i, c in zip(layers, cv, strict=True)])
    ax.set_xlabel("expert")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, label="% of the layer's routed slots", fraction=0.04, format=PercentFormatter(1.0))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
