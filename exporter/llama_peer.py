"""One llama.cpp run of `moedge bench --peers llama.cpp`, in a process of its own.

llama.cpp is native code that runs inside the process calling it: on session 10's VM its AMX kernels crashed
(SIGSEGV, SIGILL) and took the whole bench, our own results included, with them. `peers.llama_cpp_runs` runs each
thread count here, in a fresh process, and reports a run that dies as a row naming the signal.

    python -m moedge.exporter.llama_peer < job.json   # {"path", "threads", "prompt", "tokens"} → one JSON line
"""

from __future__ import annotations

import json
import sys
import time


def run(job: dict) -> dict:
    """llama.cpp on the GGUF at job["path"] with job["threads"] threads: prefill tokens/s of job["prompt"], then
    median decode ms/token over job["tokens"]."""
    from llama_cpp import Llama

    from .peers import _median_ms

    prompt, tokens, threads = job["prompt"], job["tokens"], job["threads"]
    llm = Llama(job["path"], n_ctx=len(prompt) + len(tokens) + 1, n_batch=len(prompt), n_ubatch=len(prompt),
                n_threads=threads, n_threads_batch=threads, verbose=False)
    start = time.perf_counter()
    llm.eval(prompt)
    prefill = len(prompt) / (time.perf_counter() - start)
    decode = _median_ms(lambda t: llm.eval([t]), tokens)
    llm.close()
    return {"decode_ms_median": decode, "prefill_tokens_per_s": prefill}


if __name__ == "__main__":
    print(json.dumps(run(json.load(sys.stdin))))
