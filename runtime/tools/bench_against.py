"""`moedge bench BUNDLE --against OTHER ...`: other bundles decoded in turn with BUNDLE, token by token, in one
process, and BUNDLE's speed-up over each.

Two bundles benched one after the other meet the machine in different moods: on session 13's VM a bundle's
median decode latency moved by 10-40% from one minute to the next (the bandwidth probe read 12-20 GB/s at one
thread), so "int4 is 1.5x faster than int8" could not be told from two `moedge bench` runs. Here every model
decodes token i of the same seeded stream before any decodes token i + 1 (the order rotating from token to
token), so a slow second slows each alike; the speed-up is the median over tokens of OTHER's latency over
BUNDLE's for the same token. Every model is loaded at once: their resident memory adds up.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..bundle import read_manifest
from ..errors import InputError
from ..model import Model
from .bench import WARMUP_TOKENS


def check_against(bundle: str | Path, others: list[str], prompt_tokens: int, new_tokens: int) -> None:
    """Refuse (InputError) OTHER bundles that cannot take the run: unreadable, the same folder as BUNDLE, or a
    context shorter than the prompt and the new tokens."""
    paths = [Path(bundle), *map(Path, others)]
    if len({p.resolve() for p in paths}) < len(paths):
        raise InputError("--against names BUNDLE or one bundle twice: each bundle is decoded once per token")
    for path in paths:
        spec = read_manifest(path).spec
        if prompt_tokens + new_tokens > spec.max_seq_len:
            raise InputError(f"--prompt-tokens {prompt_tokens} + --new-tokens {new_tokens} exceed {path}'s context "
                             f"of {spec.max_seq_len} tokens")


def bench_against(bundle: str | Path, others: list[str], threads: list[int], prompt_tokens: int, new_tokens: int,
                  repeat: int, seed: int, kv_cache: str | None = None, show_progress: bool = True) -> list[dict]:
    """For each thread count and OTHER: both median decode latencies (ms) and BUNDLE's speed-up over OTHER (the
    median of per-token ratios, and the ratio of the medians), from `repeat` runs decoded in turn."""
    check_against(bundle, others, prompt_tokens, new_tokens)
    paths = [Path(bundle), *map(Path, others)]
    vocab = min(read_manifest(p).spec.vocab_size for p in paths)  # token ids every model takes
    results = []
    total = len(threads) * repeat * new_tokens * len(paths)
    with tqdm(total=total, desc="bench --against", unit="tok", disable=not show_progress) as progress:
        for n in threads:
            latencies = _interleaved([Model.load(p, threads=n, kv_cache=kv_cache) for p in paths], prompt_tokens,
                                     new_tokens, repeat, np.random.default_rng(seed), vocab, progress)
            base = latencies[0]
            for path, other in zip(paths[1:], latencies[1:], strict=True):
                results.append({
                    "bundle": str(path), "threads": n, "decode_ms_median": float(np.median(other)) * 1e3,
                    "base_decode_ms_median": float(np.median(base)) * 1e3,
                    "speedup": float(np.median(other / base)),
                    "speedup_of_medians": float(np.median(other) / np.median(base))})
    return results


def _interleaved(models: list[Model], prompt_tokens: int, new_tokens: int, repeat: int, rng: np.random.Generator,
                 vocab: int, progress: tqdm) -> list[np.ndarray]:
    """Each model's decode latencies (s) after the warm-up of each run, token i of every model before token i + 1."""
    latencies: list[list[float]] = [[] for _ in models]
    for _ in range(repeat):
        prompt, tokens = rng.integers(0, vocab, prompt_tokens), rng.integers(0, vocab, new_tokens)
        sessions = [model.session() for model in models]
        for session in sessions:
            session.prefill(prompt, last_only=True)
        for i, token in enumerate(tokens):
            for k in range(len(models)):
                j = (i + k) % len(models)  # who goes first rotates: none always follows the same one
                start = time.perf_counter()
                sessions[j].decode(int(token))
                if i >= WARMUP_TOKENS:
                    latencies[j].append(time.perf_counter() - start)
                progress.update(1)
    return [np.array(lat) for lat in latencies]
