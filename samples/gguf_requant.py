"""The README's GGUF table: what quantizing a GGUF file's weights a second time costs.

    python samples/gguf_requant.py samples/default-moe [--max-tokens N]

The trained checkpoint is exported float32 and written as GGUF in each type gguf-py quantizes (every
matrix; norms and routers stay float32, as llama.cpp keeps them); each file is imported again as it is
(`--float-experts`: the file's own accuracy), with int8 per output channel (the default), int8 per group
of 32 and int4 per group of 32 (`--bits 4`). Each row: held-out perplexity, its change against the file
as it is (the cost of the second quantization) and against the float32 model, and the experts' relative
error (Frobenius) added by the second quantization. The last rows quantize the float32 model once.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import gguf
import numpy as np
from corpus import documents, split

from moedge.exporter import export
from moedge.exporter.bundle_weights import bundle_float_tensors
from moedge.exporter.gguf_writer import write_gguf
from moedge.exporter.reference import reference_tokenizer
from moedge.runtime import Model
from moedge.runtime.bundle import read_manifest
from moedge.runtime.tools.evaluate import evaluate, windows

Q = gguf.GGMLQuantizationType
SOURCES = (Q.Q8_0, Q.Q5_1, Q.Q5_0, Q.Q4_1, Q.Q4_0)
SCHEMES = {"as is (float)": dict(float_experts=True), "int8 per channel": {},
           "int8 group 32": dict(group_size=32), "int4 group 32": dict(bits=4)}


def experts(bundle: Path) -> dict[str, np.ndarray]:
    return {n: t for n, t in bundle_float_tensors(bundle, read_manifest(bundle)) if ".experts." in n}


def added_error(bundle: Path, source: dict[str, np.ndarray]) -> float:
    """The experts' largest relative Frobenius error against `source`'s experts."""
    return max(float(np.linalg.norm(t - source[n]) / np.linalg.norm(source[n])) for n, t in experts(bundle).items())


def main(checkpoint: str, max_tokens: int | None = None) -> str:
    """Print (and return) the markdown table."""
    checkpoint, tmp = Path(checkpoint), Path(tempfile.mkdtemp())
    texts = [text for _, text in split(documents())[1]]
    docs = [e.ids for e in reference_tokenizer(checkpoint).encode_batch(texts)]
    float_bundle = tmp / "float.moedge"
    export(checkpoint, float_bundle, float_experts=True, show_progress=False)
    chunks = windows(docs, read_manifest(float_bundle).spec.max_seq_len, max_tokens)
    base = evaluate(Model.load(float_bundle, threads=1), chunks).perplexity
    rows = ["| source | bundle | held-out perplexity | vs the file as it is | vs float32 | experts: added error |",
            "|---|---|---|---|---|---|", f"| float32 model | float32 | {base:.3f} | — | — | — |"]
    for qtype in (*SOURCES, None):
        src = write_gguf(float_bundle, read_manifest(float_bundle), tmp / f"{qtype}.gguf", qtype) if qtype else None
        file_ppl, file_experts = None, experts(float_bundle)
        for label, options in SCHEMES.items():
            if qtype is None and label.startswith("as is"):
                continue
            bundle = tmp / f"{qtype}-{label.replace(' ', '-')}.moedge"
            export(src or checkpoint, bundle, show_progress=False, **options)
            ppl = evaluate(Model.load(bundle, threads=1), chunks).perplexity
            if label.startswith("as is"):
                file_ppl, file_experts = ppl, experts(bundle)
            vs_file = f"{100 * (ppl / file_ppl - 1):+.2f}%" if file_ppl and not label.startswith("as is") else "—"
            rows.append(f"| {qtype.name + ' GGUF' if qtype else 'float32 model'} | {label} | {ppl:.3f} | {vs_file} | "
                        f"{100 * (ppl / base - 1):+.2f}% | {added_error(bundle, file_experts):.4f} |")
            print(rows[-1], flush=True)
    table = "\n".join(rows)
    print(f"\n{table}")
    return table


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--max-tokens", type=int, default=None, help="score only the first N held-out tokens")
    args = parser.parse_args()
    main(args.checkpoint, args.max_tokens)
