"""`moedge bench`: decode latency, prefill speed, cold start, memory and the roofline of a bundle.

Decode steps are fed a seeded random token stream (greedy decoding of a random-weight model
collapses to one token and touches few experts). Time to first token and memory are measured
in fresh processes (`bench_child`); latencies in this process, one model load per thread count.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

from ..bundle import read_manifest
from ..errors import InputError
from ..forward import Probe
from ..kernel_vnni import VNNI
from ..kv_cache import token_bytes
from ..model import Model
from ..numba_cache import ROW_PREFETCH
from ..storage import step_bytes, storage
from .bandwidth import BandwidthProbe, read_bandwidths
from .memory_cap import drop_cached_pages, memory_cgroup

WARMUP_TOKENS = 4
# the probe's read after every other token of the paired run: long enough for both threads' blocks to stream
# (64 MB read 20-30% slower than 1 GiB at two threads here), short enough to follow this VM's bandwidth, which
# moves between ~35 and ~60 GB/s at two threads from one second to the next
PAIRED_PROBE_BYTES = 256 << 20
PEERS = ("onnxruntime-full-graph", "pytorch-eager", "llama.cpp")  # `moedge bench --peers` (exporter/peers.py)
PARTS = ("dense", "routing", "experts", "head")
# the runs under a memory cap, by `bench_child --read-ahead`: the default (reading ahead while it measures faster),
# then never and always
CAPPED_RUNS = {"capped": "auto", "capped_no_read_ahead": "off", "capped_read_ahead": "on"}


@dataclass
class ThreadResult:
    """Everything measured at one thread count (times in ms, rates per second, sizes in bytes)."""

    threads: int
    decode_ms_median: float
    decode_ms_p90: float
    decode_ms_p99: float
    tokens_per_s: float
    prefill_tokens_per_s: float
    breakdown_ms: dict[str, float]  # median ms per token of each part (as the decode latency: the median)
    bandwidth_gb_s: float  # the fastest way's best read (`bandwidth.WAYS`): the roofline's
    roofline_ms: float  # the step's weights and KV cache (`bytes_per_decode_step`'s total) at that bandwidth
    ratio_to_roofline: float
    ratio_to_weights_roofline: float  # against the weights' bytes alone (the roofline before session 15)
    python_overhead_fraction: float
    paired: dict[str, float | list[float]]  # the paired run (`paired_ratio`): its ratio, latencies and probe reads
    latencies_ms: list[float] = field(repr=False)  # every run's, one after the other
    prefill_runs: list[float] = field(default_factory=list)  # prefill tokens/s of each run
    cold_start: dict[str, dict] = field(default_factory=dict)
    bandwidth_ways_gb_s: dict[str, float] = field(default_factory=dict)  # each way's best read (`read_bandwidths`)


class PartTimer(Probe):
    """Adds up the time of each part of a step (`forward` calls `lap` as each part ends)."""

    def __init__(self):
        self.totals: dict[str, float] = defaultdict(float)
        self.last = time.perf_counter()

    def start(self) -> None:
        self.totals.clear()
        self.last = time.perf_counter()

    def lap(self, part: str) -> None:
        now = time.perf_counter()
        self.totals[part] += now - self.last
        self.last = now


class DecodeRuns(NamedTuple):
    """What `measure_decode` measured (times in s)."""

    latencies: list[float]  # every token's after the warm-up, of every plain run
    prefill_rates: list[float]  # tokens/s of each plain run's prompt
    parts: dict[str, float]  # median time per part per token, from the part-by-part run
    paired: list[tuple[float, float]]  # the paired run's (latency, GB/s of the probe read right after that token)


def measure_decode(model: Model, prompt_tokens: int, new_tokens: int, repeat: int, seed: int,
                   progress: tqdm, probe_read: Callable[[], float] | None = None) -> DecodeRuns:
    """Per-token decode latencies and prefill tokens/s of each of `repeat` runs, and, from one more run part by
    part under a probe (`forward`'s layer-by-layer path: a probe sees each part end), the median time per part per
    token; "other" is the median of what the parts leave of each token. With `probe_read` (one read of the memory
    bandwidth probe, GB/s), a last run pairs every other token's latency with a probe read made right after it
    (the tokens between start after a probe read, so caches the step would have kept are cold: not paired)."""
    rng = np.random.default_rng(seed)
    vocab = model.spec.vocab_size
    timer = PartTimer()
    latencies, prefill_rates, parts, paired = [], [], defaultdict(list), []
    for run in range(repeat + 1 + (probe_read is not None)):
        parted = run == repeat
        session = model.session(probe=timer) if parted else model.session()
        prompt = rng.integers(0, vocab, prompt_tokens)
        start = time.perf_counter()
        session.prefill(prompt, last_only=True)
        if run < repeat:
            prefill_rates.append(prompt_tokens / (time.perf_counter() - start))
        for i, token in enumerate(rng.integers(0, vocab, new_tokens)):
            timer.start()
            start = time.perf_counter()
            session.decode(int(token))
            elapsed = time.perf_counter() - start
            if run > repeat:
                if i >= WARMUP_TOKENS and (i - WARMUP_TOKENS) % 2 == 0:  # each starts as a plain run's token
                    paired.append((elapsed, probe_read()))
            elif i >= WARMUP_TOKENS and not parted:
                latencies.append(elapsed)
            elif i >= WARMUP_TOKENS:
                for part in PARTS:
                    parts[part].append(timer.totals.get(part, 0.0))
                parts["other"].append(elapsed - sum(timer.totals.get(part, 0.0) for part in PARTS))
            progress.update(1)
    return DecodeRuns(latencies, prefill_rates, {k: float(np.median(v)) for k, v in parts.items()}, paired)


def paired_ratio(paired: list[tuple[float, float]], step_bytes: int) -> float:
    """The median over tokens of each token's latency over its own roofline: the step's bytes at the bandwidth
    read right after it. Where the machine's bandwidth moves within a run, a best-of probe taken once compares
    tokens decoded at one rate with a roofline at another; this pairs each token with its moment's rate."""
    return float(np.median([latency * bandwidth * 1e9 / step_bytes for latency, bandwidth in paired]))


def cold_start(bundle: Path, threads: int, prompt_tokens: int, seed: int, numba_cache: str | None,
               decode_tokens: int | None = None, cgroup_procs: Path | None = None, read_ahead: str = "auto",
               kv_cache: str | None = None) -> dict:
    """Run `bench_child` in a fresh process; `numba_cache` = a folder for a cold numba cache; `cgroup_procs`:
    the cgroup to run it in (see `memory_cap`); `read_ahead`: "off", "on" or "auto" (`Model.load`'s default);
    `kv_cache`: the KV cache's dtype (None: `Model.load`'s default)."""
    env = dict(os.environ)
    if numba_cache is not None:
        env["NUMBA_CACHE_DIR"] = numba_cache
    cmd = [sys.executable, "-m", "moedge.runtime.tools.bench_child", str(bundle), "--threads", str(threads),
           "--prompt-tokens", str(prompt_tokens), "--seed", str(seed), "--spawned-at", repr(time.time())]
    if decode_tokens is not None:
        cmd += ["--decode-tokens", str(decode_tokens)]
    cmd += ["--read-ahead", read_ahead] + (["--kv-cache", kv_cache] if kv_cache else [])
    join = None if cgroup_procs is None else lambda: cgroup_procs.write_text(str(os.getpid()))
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600, preexec_fn=join)
    if result.returncode == -signal.SIGKILL and cgroup_procs is not None:
        return {"killed": "the out-of-memory killer ended it: the limit is below what the model needs"}
    if result.returncode != 0:
        raise RuntimeError(f"bench child failed: {result.stderr.strip().splitlines()[-1:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def capped_runs(bundle: Path, threads: int, prompt_tokens: int, new_tokens: int, seed: int,
                memory_limit: int, kv_cache: str | None = None) -> dict:
    """Decode in fresh processes with the bundle's pages dropped first: uncapped, then inside a memory
    cgroup of `memory_limit` bytes with reading ahead off, on, and as `Model.load` does by default (while it
    measures faster)."""
    runs = {"limit_bytes": memory_limit}
    drop_cached_pages(bundle)
    runs["uncapped"] = cold_start(bundle, threads, prompt_tokens, seed, None, new_tokens, kv_cache=kv_cache)
    for label, read_ahead in CAPPED_RUNS.items():
        with memory_cgroup(memory_limit) as procs:
            drop_cached_pages(bundle)
            runs[label] = cold_start(bundle, threads, prompt_tokens, seed, None, new_tokens, procs, read_ahead,
                                     kv_cache)
    return runs


def kv_step_bytes(spec, kv_dtype: str, prompt_tokens: int, new_tokens: int) -> int:
    """Bytes of KV cache a decode step of the run reads on average: every layer's keys and values of the cached
    rows, prompt_tokens + new_tokens / 2 of them."""
    return int(token_bytes(spec, kv_dtype) * (prompt_tokens + new_tokens / 2))


def read_per_step(weights: dict[str, int], kv_bytes: int) -> dict[str, int]:
    """What a decode step reads: the weights (`storage.step_bytes`: dense, experts, and their sum as "weights")
    and the KV cache's rows at the run's mean context; "total", the roofline's bytes, is both. Attention reads
    every cached row each step, so at a long context the cache is as much a step's traffic as the weights."""
    return {"dense": weights["dense"], "experts": weights["experts"], "weights": weights["total"],
            "kv_cache": kv_bytes, "total": weights["total"] + kv_bytes}


def bench(bundle: str | Path, threads: list[int], prompt_tokens: int = 128, new_tokens: int = 64,
          repeat: int = 3, seed: int = 0, cold: bool = True, show_progress: bool = True,
          memory_limit: int | None = None, kv_cache: str | None = None) -> dict:
    """Measure the bundle at each thread count (`kv_cache`: its dtype, None: `Model.load`'s default); returns a
    JSON-ready report. With `memory_limit`, also decode at the first thread count under that memory cap, beside
    an uncapped run (`capped_runs`)."""
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    if prompt_tokens + new_tokens > manifest.spec.max_seq_len:
        raise InputError(f"--prompt-tokens {prompt_tokens} + --new-tokens {new_tokens} exceed the model's context "
                         f"of {manifest.spec.max_seq_len} tokens")
    weight_bytes = step_bytes(manifest)
    capped = {} if memory_limit is None else {  # first: a cgroup that cannot be made fails before the long part
        "memory_cap": capped_runs(bundle, threads[0], prompt_tokens, new_tokens, seed, memory_limit, kv_cache)}
    results = []
    total = len(threads) * (repeat + 2) * new_tokens  # + the part-by-part and the paired runs
    with tqdm(total=total, desc="bench", unit="tok", disable=not show_progress) as progress:
        for n in threads:
            model = Model.load(bundle, threads=n, kv_cache=kv_cache)
            kv_dtype = model.weights.kv_dtype
            per_step = read_per_step(weight_bytes, kv_step_bytes(manifest.spec, kv_dtype, prompt_tokens, new_tokens))
            probe = BandwidthProbe(n, PAIRED_PROBE_BYTES)
            latencies, prefill_rates, parts, paired = measure_decode(model, prompt_tokens, new_tokens, repeat, seed,
                                                                     progress, probe.sample)
            del model, probe
            ms = np.array(latencies) * 1e3
            ways = read_bandwidths(n)
            bandwidth = max(ways.values())
            roofline_ms = per_step["total"] / (bandwidth * 1e9) * 1e3
            breakdown = {k: v * 1e3 for k, v in parts.items()}
            inside = breakdown["dense"] + breakdown["head"] + breakdown["experts"]
            median = float(np.median(ms))
            results.append(ThreadResult(
                threads=n, decode_ms_median=median, decode_ms_p90=float(np.percentile(ms, 90)),
                decode_ms_p99=float(np.percentile(ms, 99)), tokens_per_s=1e3 / median,
                prefill_tokens_per_s=float(np.median(prefill_rates)), breakdown_ms=breakdown, bandwidth_gb_s=bandwidth,
                bandwidth_ways_gb_s=ways,
                roofline_ms=roofline_ms, ratio_to_roofline=median / roofline_ms,
                ratio_to_weights_roofline=median / roofline_ms * per_step["total"] / per_step["weights"],
                python_overhead_fraction=max(0.0, 1.0 - inside / sum(breakdown.values())),
                paired={"ratio_to_roofline": paired_ratio(paired, per_step["total"]),
                        "ratio_to_weights_roofline": paired_ratio(paired, per_step["weights"]),
                        "latencies_ms": [latency * 1e3 for latency, _ in paired],
                        "bandwidth_gb_s": [bandwidth for _, bandwidth in paired]},
                latencies_ms=ms.tolist(),
                prefill_runs=prefill_rates))
            if cold:
                with tempfile.TemporaryDirectory() as empty_cache:
                    results[-1].cold_start = {
                        "numba_cache_cold": cold_start(bundle, n, prompt_tokens, seed, empty_cache, kv_cache=kv_cache),
                        "numba_cache_warm": cold_start(bundle, n, prompt_tokens, seed, None, kv_cache=kv_cache)}
    return {**capped, "bundle": str(bundle), "model": manifest.spec.to_dict(), "quantization": manifest.quant_scheme,
            "bundle_bytes": sum(f["size"] for f in manifest.files.values()),
            "weights": sum(part.weights for part in storage(manifest)),  # stored: a tied head counts twice
            "bytes_per_decode_step": per_step, "prompt_tokens": prompt_tokens, "new_tokens": new_tokens,
            "kv_cache": {"dtype": kv_dtype, "bytes_per_decode_step": per_step["kv_cache"]},
            "repeat": repeat, "seed": seed, "token_stream": "seeded random",
            "row_dots": "avx512-vnni" if VNNI else "portable", "row_prefetch_bytes": list(ROW_PREFETCH),
            "results": [asdict(r) for r in results]}
