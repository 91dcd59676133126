"""One fresh-process run for `moedge bench`: time to first token and memory, printed as JSON.

    python -m moedge.runtime.tools.bench_child BUNDLE --threads N --prompt-tokens P --seed S --spawned-at T

Measures python start with imports, load, prefill and the first decode, then decodes a seeded random stream and
reports peak RSS over the pre-load RSS and the experts file's resident bytes (mincore).
"""

import argparse
import json
import time

import numpy as np

from moedge.runtime import Model
from moedge.runtime.tools.residency import resident_pages

DECODE_TOKENS = 32


def _status_bytes(field: str) -> int:
    """A memory figure of this process from /proc/self/status (VmRSS now, VmHWM peak)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def main(bundle: str, threads: int, prompt_tokens: int, seed: int, spawned_at: float) -> dict:
    imported = time.time()
    rss_before = _status_bytes("VmRSS")
    model = Model.load(bundle, threads=threads)
    loaded = time.time()
    rng = np.random.default_rng(seed)
    session = model.session()
    session.prefill(rng.integers(0, model.spec.vocab_size, prompt_tokens), last_only=True)
    prefilled = time.time()
    session.decode(int(rng.integers(0, model.spec.vocab_size)))
    first = time.time()
    for token in rng.integers(0, model.spec.vocab_size, DECODE_TOKENS):
        session.decode(int(token))
    peak = _status_bytes("VmHWM")  # not ru_maxrss: that one starts from the parent's size at fork
    store = model.experts
    resident = int(resident_pages(store.address, store.size).sum()) * 4096 if store else 0
    dense = (model.root / model.manifest.dense_file).stat().st_size
    return {"startup_s": imported - spawned_at, "load_s": loaded - imported,
            "prefill_s": prefilled - loaded, "first_decode_s": first - prefilled,
            "time_to_first_token_s": first - spawned_at, "rss_before_load": rss_before, "rss_peak": peak,
            "rss_growth": peak - rss_before, "dense_bytes": dense,
            "experts_bytes_touched": store.bytes_touched if store else 0, "experts_resident_bytes": resident,
            "decode_tokens": DECODE_TOKENS + 1}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("bundle")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--prompt-tokens", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--spawned-at", type=float, required=True)
    print(json.dumps(main(**vars(parser.parse_args()))))
