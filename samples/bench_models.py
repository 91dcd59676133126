"""Write the benchmark bundles from a fixed seed (nothing is downloaded).

    python samples/bench_models.py OUT_DIR [--only granite-1b-shape ...] [--group-size 32]
        [--bits 4 [--int8-budget 0.25] [--dense-bits 4] [--head-bits 8]] [--float-dense]

Weights are random (normal, scaled by 1/sqrt(fan-in)), generated tensor by tensor from a seed
derived from each canonical name, so a bundle is reproducible and no float checkpoint of the
full model is ever held in memory. Benchmarks feed these models a seeded random token stream.
"""

from __future__ import annotations

import argparse
import zlib
from pathlib import Path

import numpy as np

from moedge.exporter.bundle_writer import write_bundle
from moedge.exporter.model import canonical_shapes
from moedge.exporter.options import ExportOptions
from moedge.exporter.source import Source
from moedge.runtime.bundle import EMBEDDING
from moedge.runtime.spec import ModelSpec, RoutingSpec

SEED = 1234
VOCAB = 49152
SHAPES = {
    "granite-1b-shape": ModelSpec(
        vocab_size=VOCAB, hidden_size=1024, n_layers=24, n_heads=16, n_kv_heads=8, head_dim=64,
        intermediate_size=0, layer_kinds=("moe",) * 24, max_seq_len=2048, tie_embeddings=True,
        expert_intermediate_size=512, routing=RoutingSpec(n_experts=32, top_k=8)),
    "olmoe-shape": ModelSpec(
        vocab_size=VOCAB, hidden_size=1024, n_layers=8, n_heads=16, n_kv_heads=16, head_dim=64,
        intermediate_size=0, layer_kinds=("moe",) * 8, max_seq_len=2048, qk_norm="full",
        expert_intermediate_size=512, routing=RoutingSpec(n_experts=64, top_k=8, normalize_top_k=False)),
    "mixtral-shape": ModelSpec(
        vocab_size=VOCAB, hidden_size=512, n_layers=8, n_heads=8, n_kv_heads=4, head_dim=64,
        intermediate_size=0, layer_kinds=("moe",) * 8, max_seq_len=2048,
        expert_intermediate_size=1408, routing=RoutingSpec(n_experts=8, top_k=2)),
    "dense-400m": ModelSpec(
        vocab_size=VOCAB, hidden_size=1024, n_layers=24, n_heads=16, n_kv_heads=8, head_dim=64,
        intermediate_size=4096, layer_kinds=("dense",) * 24, max_seq_len=2048, tie_embeddings=True),
}


def random_source(spec: ModelSpec, seed: int = SEED) -> Source:
    """A `Source` whose tensors are drawn on demand from a per-name seed."""
    shapes = canonical_shapes(spec)

    def get(name: str) -> np.ndarray:
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        shape = shapes[name]
        if name.endswith("norm.weight"):
            return np.ones(shape, np.float32)
        scale = 1.0 if name == EMBEDDING else shape[-1] ** -0.5
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(scale))

    return Source(spec=spec, get=get)


def main(out: str, only: list[str] | None = None, group_size: int | None = None, float_dense: bool = False,
         bits: int = 8, int8_budget: float = 0.0, dense_bits: int | None = None, head_bits: int | None = None) -> None:
    root = Path(out)
    for name in only or SHAPES:
        print(f"{name}:")
        suffix = ("-int4" if bits == 4 else "") + (f"-g{group_size}" if group_size else "")
        suffix += f"-mixed{round(100 * int8_budget)}" if int8_budget else ""
        suffix += "-float-dense" if float_dense else f"-dense{dense_bits}" if dense_bits else ""
        suffix += f"-head{head_bits}" if head_bits else ""
        write_bundle(random_source(SHAPES[name]), root / f"{name}{suffix}.moedge",
                     ExportOptions(group_size=group_size, bits=bits, force=True, float_dense=float_dense,
                                   int8_fraction=int8_budget, dense_bits=dense_bits, head_bits=head_bits))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--only", nargs="*", choices=list(SHAPES))
    parser.add_argument("--group-size", type=int, default=None)
    parser.add_argument("--float-dense", action="store_true", help="float32 attention matrices (see moedge export)")
    parser.add_argument("--bits", type=int, choices=(4, 8), default=8, help="int4 or int8 experts (see moedge export)")
    parser.add_argument("--int8-budget", type=float, default=0.0, help="with --bits 4: share of experts kept int8")
    parser.add_argument("--dense-bits", type=int, choices=(4, 8), default=None,
                        help="with --bits 4: dense linears and LM head at 4 or 8 bits (see moedge export)")
    parser.add_argument("--head-bits", type=int, choices=(4, 8), default=None,
                        help="the LM head at 4 or 8 bits, apart from the dense linears (see moedge export)")
    args = parser.parse_args()
    main(args.out, args.only, args.group_size, args.float_dense, args.bits, args.int8_budget, args.dense_bits,
         args.head_bits)
