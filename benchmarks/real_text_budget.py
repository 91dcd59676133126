"""Decode on real text under expert budgets: the trained sample's held-out split, one token a step.

    python benchmarks/real_text_budget.py [BUNDLE] [--tokens 3000] [--fractions 0.25 0.5 0.75] [--read-ahead auto]

The bundle (default: `build/default.moedge`, what `make demo` exports from `samples/default-moe`) decodes the held-
out documents' tokens one by one (teacher forcing, a fresh session at each document and at the context length),
first with every expert in memory, then under budgets that hold `fractions` of its experts (read from storage with
O_DIRECT when missed, so the page cache does not help). Prints ms/token (median), × the unbudgeted run, the expert
hit rate, MB read per token (misses and reads ahead) and the read-ahead recall. Each configuration runs in its own
process (its own memory), in turn, twice.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WARMUP = 32  # steps before the timing (kernels, first reads)


def held_out_tokens(model, count: int) -> list[list[int]]:
    """Token ids of held-out documents, split at the context length, `count` + WARMUP tokens in all."""
    sys.path.insert(0, str(ROOT / "samples"))
    from corpus import documents, split

    pieces, total = [], 0
    for _, text in split(documents())[1]:
        ids = model.tokenizer.encode(text).ids
        for start in range(0, len(ids), model.spec.max_seq_len):
            piece = ids[start:start + model.spec.max_seq_len][:count + WARMUP - total]
            pieces.append(piece)
            total += len(piece)
            if total >= count + WARMUP:
                return pieces
    return pieces


def measure(bundle: str, fraction: float | None, count: int, read_ahead: str) -> dict:
    """One configuration, in this process."""
    from moedge.runtime import Model
    from moedge.runtime.read_ahead_governor import READ_AHEAD_MODES

    probe = Model.load(bundle, threads=1)
    experts = probe.experts.file_bytes
    budget = None if fraction is None else int(fraction * experts)
    del probe
    model = Model.load(bundle, threads=1, expert_budget=budget, read_ahead=READ_AHEAD_MODES[read_ahead])
    store, times, steps = model.experts, [], 0
    for piece in held_out_tokens(model, count):
        session = model.session()
        for token in piece:
            if steps == WARMUP:
                fetched, routed, ahead = store.fetches, int(store.hits.sum()), store.read_aheads
                right, guessed = store.guesses_right, store.guesses_routed
            start = time.perf_counter()
            session.decode(token)
            if steps >= WARMUP:
                times.append(time.perf_counter() - start)
            steps += 1
    fetches = store.fetches - fetched
    span = float(store.spans.mean())
    guesses = store.guesses_routed - guessed
    routed = int(store.hits.sum()) - routed
    return {"fraction": fraction, "ms": 1e3 * float(np.median(times)), "hit_rate": 1 - fetches / routed,
            "mb_per_token": (fetches + store.read_aheads - ahead) * span / len(times) / 1e6,  # routed and guessed
            "recall": (store.guesses_right - right) / guesses if guesses else None, "tokens": len(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", nargs="?", default=str(ROOT / "build" / "default.moedge"))
    parser.add_argument("--tokens", type=int, default=3000)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    parser.add_argument("--read-ahead", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", type=float, default=None, help=argparse.SUPPRESS)  # a fraction; -1: none
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args.bundle, None if args.child < 0 else args.child, args.tokens, args.read_ahead)))
        return
    rows: dict[float | None, list[dict]] = {}
    for _ in range(args.rounds):
        for fraction in [None, *args.fractions]:
            cmd = [sys.executable, __file__, args.bundle, "--tokens", str(args.tokens), "--read-ahead", args.read_ahead,
                   "--child", str(-1 if fraction is None else fraction)]
            result = subprocess.run(cmd, capture_output=True, text=True, check=True)
            rows.setdefault(fraction, []).append(json.loads(result.stdout.strip().splitlines()[-1]))
    base = [r["ms"] for r in rows[None]]
    print(f"{args.bundle}: {rows[None][0]['tokens']} held-out tokens a run, {args.rounds} runs each, one thread, "
          f"read-ahead {args.read_ahead}")
    print("| experts held | ms/token (median, each run) | × all held | hit rate | MB read per token "
          "| read-ahead recall |")
    print("|---|---|---|---|---|---|")
    for fraction, runs in rows.items():
        held = "all" if fraction is None else f"{fraction:.0%}"
        ms = " / ".join(f"{r['ms']:.3f}" for r in runs)
        ratio = " / ".join(f"{r['ms'] / b:.2f}" for r, b in zip(runs, base, strict=True))
        recall = [r["recall"] for r in runs if r["recall"] is not None]
        shown = f"{np.mean(recall):.1%}" if recall else "—"
        print(f"| {held} | {ms} | {ratio} | {np.mean([r['hit_rate'] for r in runs]):.1%} | "
              f"{np.mean([r['mb_per_token'] for r in runs]):.3f} | {shown} |")


if __name__ == "__main__":
    main()
