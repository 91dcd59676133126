"""One fresh-process run for `moedge bench`: time to first token and memory, printed as JSON.

    python -m moedge.runtime.tools.bench_child BUNDLE --threads N --prompt-tokens P --seed S --spawned-at T
        [--decode-tokens D] [--read-ahead auto|on|off] [--kv-cache float16|float32]

Measures python start with imports, load, prefill and the first decode, then decodes a seeded random stream
(D tokens, 32 by default) and reports its median latency, the bytes read from storage per decoded token
(/proc/self/io), the share of routed experts already mapped (hit rate; an expert read ahead counts as mapped),
the share of routed experts that had been guessed (read-ahead recall), peak RSS over the pre-load RSS and the
experts file's resident bytes (mincore).
"""

import argparse
import json
import mmap
import time

import numpy as np

from moedge.runtime import Model
from moedge.runtime.kv_cache import KV_DTYPES
from moedge.runtime.memory import available_memory
from moedge.runtime.read_ahead_governor import READ_AHEAD_MODES
from moedge.runtime.tools.residency import resident_pages

DECODE_TOKENS = 32


def _read_bytes() -> int:
    """Bytes this process has caused to be read from storage (page-cache misses included)."""
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("read_bytes:"))


def _status_bytes(field: str) -> int:
    """A memory figure of this process from /proc/self/status (VmRSS now, VmHWM peak)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def main(bundle: str, threads: int, prompt_tokens: int, seed: int, spawned_at: float,
         decode_tokens: int = DECODE_TOKENS, read_ahead: str = "auto", kv_cache: str | None = None) -> dict:
    imported = time.time()
    rss_before = _status_bytes("VmRSS")
    available = available_memory()  # what Model.load sees when it decides on an expert budget
    model = Model.load(bundle, threads=threads, read_ahead=READ_AHEAD_MODES[read_ahead], kv_cache=kv_cache)
    loaded = time.time()
    rng = np.random.default_rng(seed)
    session = model.session()
    session.prefill(rng.integers(0, model.spec.vocab_size, prompt_tokens), last_only=True)
    prefilled = time.time()
    session.decode(int(rng.integers(0, model.spec.vocab_size)))
    first = time.time()
    store = model.experts
    read_before, fetched_before = _read_bytes(), store.fetches if store else 0
    ahead_before = store.read_aheads if store else 0
    wait_before = store.read_wait if store else 0.0
    right_before, guessed_before = (store.guesses_right, store.guesses_routed) if store else (0, 0)
    routed_before = int(store.hits.sum()) if store else 0
    latencies = []
    for token in rng.integers(0, model.spec.vocab_size, decode_tokens):
        start = time.perf_counter()
        session.decode(int(token))
        latencies.append(time.perf_counter() - start)
    read_per_token = (_read_bytes() - read_before) / decode_tokens
    routed = int(store.hits.sum()) - routed_before if store else 0
    hit_rate = 1.0 - (store.fetches - fetched_before) / routed if routed else 1.0
    guessed = store.guesses_routed - guessed_before if store else 0
    recall = (store.guesses_right - right_before) / guessed if guessed else None
    governor = model.weights.governor  # "auto": whether each trial chose to read ahead
    peak = _status_bytes("VmHWM")  # not ru_maxrss: that one starts from the parent's size at fork
    resident = int(resident_pages(store.address, store.size).sum()) * mmap.PAGESIZE if store else 0
    dense = (model.root / model.manifest.dense_file).stat().st_size
    return {"startup_s": imported - spawned_at, "load_s": loaded - imported,
            "prefill_s": prefilled - loaded, "first_decode_s": first - prefilled,
            "time_to_first_token_s": first - spawned_at, "rss_before_load": rss_before, "rss_peak": peak,
            "rss_growth": peak - rss_before, "dense_bytes": dense,
            "experts_bytes_touched": store.bytes_touched if store else 0, "experts_resident_bytes": resident,
            "decode_tokens": decode_tokens + 1, "decode_ms_median": float(np.median(latencies)) * 1e3,
            "read_bytes_per_token": read_per_token, "expert_hit_rate": hit_rate, "guess_recall": recall,
            "read_aheads_per_token": (store.read_aheads - ahead_before) / decode_tokens if store else 0.0,
            "read_ahead_decisions": governor.decisions if governor else None,
            "read_wait_ms_per_token": 1e3 * (store.read_wait - wait_before) / decode_tokens if store else 0.0,
            "expert_budget_bytes": store.budget_bytes if store else None, "budget_note": model.budget_note,
            "kv_cache": model.weights.kv_dtype,
            "memory_available_at_load": available._asdict()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("bundle")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--prompt-tokens", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--spawned-at", type=float, required=True)
    parser.add_argument("--decode-tokens", type=int, default=DECODE_TOKENS)
    parser.add_argument("--read-ahead", choices=READ_AHEAD_MODES, default="auto")
    parser.add_argument("--kv-cache", choices=KV_DTYPES, default=None)
    print(json.dumps(main(**vars(parser.parse_args()))))
