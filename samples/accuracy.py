"""The README's accuracy table: each trained model exported with every expert quantization, scored
on the held-out split against its own float32 PyTorch model.

    python samples/accuracy.py samples/default-moe samples/default-dense [--max-tokens N] [--only LABEL ...]

For each checkpoint: the float model's perplexity (PyTorch), then one bundle per scheme —
float32 weights, int8 per output channel (the default: experts, head and the attention/dense-FFN
matrices), the same with float32 attention/dense-FFN matrices (`--float-dense`), and int8 per group
of 32/64/128, int4 per group of 32/64/128 (`--bits 4`), the same with 4-bit dense linears and LM head
(`--dense-bits 4`; and with the LM head kept int8, `--head-bits 8`), and mixed int4/int8 experts calibrated
on training text (`--int8-budget 0.25` with groups
of 32: 6 bits per weight on average; `0.15` with groups of 128: 4.85) — with its perplexity,
relative change, top-1 next-token agreement with the float model and size on disk. Rows show
what the exporter actually wrote, read back from each manifest (a dense model has no experts).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from corpus import documents, split

from moedge.exporter import ExportError, export
from moedge.exporter.checkpoint import WEIGHTS_FILE
from moedge.exporter.reference import evaluate_reference, reference_tokenizer
from moedge.runtime import Model
from moedge.runtime.bundle import Manifest
from moedge.runtime.storage import storage
from moedge.runtime.tools.evaluate import evaluate, windows

# (label, group size, bits, float experts, float dense, share of experts kept int8 in a 4-bit bundle, dense bits,
# head bits)
SCHEMES = [("float32", None, 8, True, False, 0.0, None, None),
           ("int8 per channel", None, 8, False, False, 0.0, None, None),
           ("int8 per channel, float dense", None, 8, False, True, 0.0, None, None),
           ("int8 group 32", 32, 8, False, False, 0.0, None, None),
           ("int8 group 64", 64, 8, False, False, 0.0, None, None),
           ("int8 group 128", 128, 8, False, False, 0.0, None, None),
           ("int4 group 32", 32, 4, False, False, 0.0, None, None),
           ("int4 group 64", 64, 4, False, False, 0.0, None, None),
           ("int4 group 128", 128, 4, False, False, 0.0, None, None),
           ("int4 group 32, 4-bit dense", 32, 4, False, False, 0.0, 4, None),
           ("int4 group 64, 4-bit dense", 64, 4, False, False, 0.0, 4, None),
           ("int4 group 128, 4-bit dense", 128, 4, False, False, 0.0, 4, None),
           ("int4 group 32, 4-bit dense, int8 head", 32, 4, False, False, 0.0, 4, 8),
           ("int4 group 128, 4-bit dense, int8 head", 128, 4, False, False, 0.0, 4, 8),
           ("int4 group 32, 25% int8", 32, 4, False, False, 0.25, None, None),
           ("int4 group 128, 15% int8", 128, 4, False, False, 0.15, None, None)]
TARGETS = {8: (0.003, 0.98), 4: (0.03, 0.90)}  # bits -> (perplexity change under, top-1 agreement over)


def size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def stored(manifest: Manifest) -> str:
    """What the exporter wrote, read back from the manifest: each part's scheme (`runtime.storage`)."""
    return "; ".join(f"{part.name} {part.stored}" for part in storage(manifest)[:-1] if part.weights)


def rows_for(checkpoint: Path, texts: list[str], max_tokens: int | None, threads: int,
             calibration: Path, only: set[str] | None = None) -> list[str]:
    """Markdown table rows for one checkpoint (the schemes labelled in `only`, else all)."""
    docs = [e.ids for e in reference_tokenizer(checkpoint).encode_batch(texts)]
    ref = None
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, group, bits, float_experts, float_dense, int8_fraction, dense_bits, head_bits in SCHEMES:
            if only is not None and label not in only:
                continue
            bundle = Path(tmp) / f"{label.replace(' ', '-').replace('%', '')}.moedge"
            try:
                manifest = export(checkpoint, bundle, group_size=group, bits=bits, show_progress=False,
                                  float_experts=float_experts, float_dense=float_dense, int8_fraction=int8_fraction,
                                  calibration=calibration if int8_fraction else None, dense_bits=dense_bits,
                                  head_bits=head_bits)
            except ExportError as exc:
                rows.append(f"| {checkpoint.name} | {label}: not exportable ({exc}) | | | | | |")
                continue
            if manifest.experts is None and bits == 4 and manifest.dense_linears != "int4":
                continue  # a dense model has no experts: 4-bit rows with int8 linears repeat the int8 ones
            model = Model.load(bundle, threads=threads)
            chunks = windows(docs, model.spec.max_seq_len, max_tokens)
            if ref is None:
                ref = evaluate_reference(checkpoint, chunks)
                rows.append(f"| {checkpoint.name} | float32 (PyTorch) | {ref.perplexity:.3f} | — | — | "
                            f"{(checkpoint / WEIGHTS_FILE).stat().st_size / 1e6:.1f} MB | |")
            result = evaluate(model, chunks)
            change, agree = result.perplexity / ref.perplexity - 1, result.agreement(ref)
            max_change, min_agreement = TARGETS[bits]
            ok = abs(change) < max_change and agree > min_agreement
            rows.append(f"| {checkpoint.name} | {stored(manifest)} | {result.perplexity:.3f} | {100 * change:+.3f}% | "
                        f"{100 * agree:.2f}% | {size_mb(bundle):.1f} MB | {'yes' if ok else 'NO'} |")
            print(rows[-1], flush=True)
    return rows


def main(checkpoints: list[str], max_tokens: int | None = None, threads: int = 1,
         only: list[str] | None = None) -> str:
    """Print (and return) the markdown table for `checkpoints` on the held-out split."""
    train, held_out = split(documents())
    texts = [text for _, text in held_out]
    calibration = Path(tempfile.mkdtemp()) / "calibration.txt"  # mixed bundles calibrate on training text
    calibration.write_text("\n".join(text for _, text in train[:20]))
    header = ["| model | stored (from the manifest) | held-out perplexity | change vs float | top-1 agreement | size | "
              "target (8 bits: < 0.3%, > 98%; 4 bits: < 3%, > 90%) |",
              "|---|---|---|---|---|---|---|"]
    chosen = set(only) if only else None
    rows = [row for c in checkpoints for row in rows_for(Path(c), texts, max_tokens, threads, calibration, chosen)]
    table = "\n".join(header + rows)
    print(f"\nheld-out split: {len(texts)} documents\n\n{table}")
    return table


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--max-tokens", type=int, default=None, help="score only the first N held-out tokens")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="+", metavar="LABEL", choices=[label for label, *_ in SCHEMES],
                        help="only these schemes (labels as in SCHEMES)")
    args = parser.parse_args()
    main(args.checkpoints, args.max_tokens, args.threads, args.only)
