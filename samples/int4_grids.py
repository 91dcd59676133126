"""int4's two grids measured side by side: symmetric (what bundles store, ggml Q4_0's) against asymmetric (a
scale and a minimum per group, ggml Q4_1's), on the trained samples' held-out split.

    python samples/int4_grids.py samples/default-moe samples/dense [--max-tokens N]

Each row is the float32 PyTorch model with some of its matrices replaced by their round trip through one grid
(`quant.quantize_int4` or `quant.int4_asym.quantize_int4_asym`), scored against the untouched model: perplexity, its
change, top-1 next-token agreement, and the relative RMS error of the replaced weights. The matrices replaced:
the experts (an MoE model), then the attention/dense-FFN matrices too (the LM head is the tied embedding in
both samples and stays float). Both grids go through the same harness, so their difference is the grid's
alone; the README's accuracy table measures the bundles themselves.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
from corpus import documents, split

from moedge.exporter.model import canonical_shapes
from moedge.exporter.reference import evaluate_reference, reference_tokenizer
from moedge.exporter.source import Source, open_source
from moedge.quant import dequantize, quantize_int4
from moedge.quant.int4_asym import dequantize_int4_asym, quantize_int4_asym
from moedge.runtime.tensor_names import dense_linear_names, expert_part
from moedge.runtime.tools.evaluate import windows

GRIDS: dict[str, tuple[Callable[[np.ndarray, int], np.ndarray], Callable[[int], float]]] = {
    # name -> (round trip of a matrix [..., out, in] with groups of g, bits per weight with float32 numbers)
    "symmetric": (lambda w, g: dequantize(quantize_int4(w, g)), lambda g: 4 + 32 / g),
    "asymmetric": (lambda w, g: dequantize_int4_asym(quantize_int4_asym(w, g)), lambda g: 4 + 64 / g),
}
GROUPS = (32, 64, 128)
HEADER = ["| model | int4 matrices | grid | group | bits/weight | weight error (relative RMS) | held-out perplexity | "
          "change vs float | top-1 agreement |", "|---|---|---|---|---|---|---|---|---|"]


def round_tripped(source: Source, names: set[str], grid: str, group: int, errors: list[float]) -> Source:
    """`source` whose tensors in `names` come back through `grid` (their relative RMS errors appended to
    `errors`)."""
    trip = GRIDS[grid][0]

    def get(name: str) -> np.ndarray:
        w = source.get(name)
        if name not in names:
            return w
        back = trip(w, group).astype(np.float32)
        errors.append(float(np.sqrt(np.mean((back - w) ** 2) / np.mean(w ** 2))))
        return back

    return replace(source, get=get)


def rows_for(checkpoint: Path, texts: list[str], max_tokens: int | None) -> list[str]:
    """Markdown rows for one checkpoint: every grid × group size × set of replaced matrices."""
    source = open_source(checkpoint)
    spec = source.spec
    docs = [e.ids for e in reference_tokenizer(source).encode_batch(texts)]
    chunks = windows(docs, spec.max_seq_len, max_tokens)
    ref = evaluate_reference(source, chunks)
    experts = {name for name in canonical_shapes(spec) if expert_part(name)}
    linears = dense_linear_names(spec)
    sets = ({"experts": experts, "experts and dense linears": experts | linears} if experts
            else {"dense linears": linears})
    rows = []
    for label, names in sets.items():
        for group in GROUPS:
            for grid in GRIDS:
                errors: list[float] = []
                result = evaluate_reference(round_tripped(source, names, grid, group, errors), chunks)
                change = result.perplexity / ref.perplexity - 1
                rows.append(f"| {checkpoint.name} | {label} | {grid} | {group} | {GRIDS[grid][1](group):.2f} | "
                            f"{np.mean(errors):.4f} | {result.perplexity:.3f} | {100 * change:+.3f}% | "
                            f"{100 * result.agreement(ref):.2f}% |")
                print(rows[-1], flush=True)
    return rows


def main(checkpoints: list[str], max_tokens: int | None = None) -> str:
    """Print (and return) the markdown table for `checkpoints` on the held-out split."""
    _, held_out = split(documents())
    texts = [text for _, text in held_out]
    rows = [row for c in checkpoints for row in rows_for(Path(c), texts, max_tokens)]
    table = "\n".join(HEADER + rows)
    scored = "every token" if max_tokens is None else f"the first {max_tokens} tokens"
    print(f"\n{table}\n\n({len(texts)} held-out documents, {scored} of them)")
    return table


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", help="moedge checkpoint folders (samples/default-moe ...)")
    parser.add_argument("--max-tokens", type=int, help="score only the first N held-out tokens of each model")
    args = parser.parse_args()
    main(args.checkpoints, args.max_tokens)
