"""Whether numba's on-disk cache holds the machine code of the kernel calls a run makes, and compiling them.

Compiling every kernel a bundle calls takes ~10-15 s on a small CPU, once after an install or an update
(`cache=True` keeps the machine code, see `numba_cache`); loading it from the cache takes well under a
second. `moedge run` asks which of its calls are `missing`, so that it can say it compiles (it compiles them
all before the first token); `moedge warmup` compiles ahead.
"""

from __future__ import annotations

from collections.abc import Iterable

from tqdm import tqdm

from .kernel_calls import KernelCall


def is_cached(call: KernelCall) -> bool:
    """True if numba's cache on disk holds the call's machine code for this CPU and these kernel sources (its
    index, keyed as numba keys it: argument types, CPU, bytecode; stale if a source file changed)."""
    kernel = call.kernel
    try:  # numba internals: if they move, say nothing rather than a wrong "compiling"
        cache = kernel._cache
        key = cache._index_key(call.args, kernel.targetctx.codegen())
        return key in cache._cache_file._load_index()
    except AttributeError:
        return True


def missing(calls: Iterable[KernelCall]) -> list[KernelCall]:
    """The calls whose machine code would be compiled, not loaded."""
    return [call for call in calls if not is_cached(call)]


def compile_calls(calls: list[KernelCall], show_progress: bool = False) -> None:
    """Compile (or load from the cache) each call's specialisation; numba saves what it compiles."""
    for call in tqdm(calls, desc="compile", unit="kernel", disable=not (show_progress and calls)):
        call.kernel.compile(call.args)
