"""Decode ms/token of bundles with float32 and with int8 expert activations, side by side in one process.

    .venv/bin/python benchmarks/decode_activations.py BUNDLE... [--threads 1] [--rounds 3] [--tokens 48]
        [--activations float int8]

Every bundle is loaded twice (`Model.load(activations="float")` and the default "int8"; or as `--activations`
says: `--activations int8` compares bundles alone); the
models decode the same seeded random tokens in turn, `rounds` times, after a 16-token prompt and 8 warm-up
steps; medians are printed. Interleaving keeps a shared machine's noise out of the comparison.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from moedge.runtime import Model

ACTIVATIONS = ("float", "int8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="+")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--activations", nargs="+", choices=ACTIVATIONS, default=list(ACTIVATIONS))
    args = parser.parse_args()
    models = {(b, a): Model.load(b, threads=args.threads, activations=a) for b in args.bundles
              for a in args.activations}
    vocab = min(m.spec.vocab_size for m in models.values())
    tokens = np.random.default_rng(0).integers(0, vocab, 24 + args.tokens).tolist()
    times: dict[tuple[str, str], list[float]] = {key: [] for key in models}
    for _ in range(args.rounds):
        for key, model in models.items():
            session = model.session()
            session.prefill(tokens[:16])
            for token in tokens[16:24]:
                session.decode(token)
            start = time.perf_counter()
            for token in tokens[24:]:
                session.decode(token)
            times[key].append((time.perf_counter() - start) / args.tokens * 1e3)
    for (bundle, activations), runs in times.items():
        print(f"{bundle}  {activations} activations, {args.threads} thread(s): {np.median(runs):.2f} ms/token "
              f"(rounds: {', '.join(f'{t:.1f}' for t in runs)})")


if __name__ == "__main__":
    main()
