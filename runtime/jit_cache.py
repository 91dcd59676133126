"""Whether numba's on-disk cache holds the machine code of the kernel calls a run makes, and compiling them.

Compiling every kernel a bundle calls takes ~10-15 s on a small CPU, once after an install or an update
(`cache=True` keeps the machine code, see `numba_cache`); loading it from the cache takes well under a
second. `moedge run` asks which of its calls are `missing`, so that it can say it compiles (it compiles them
all before the first token); `moedge warmup` compiles ahead. A run that finds calls missing compiles them in
a child process (`compile_apart`) and then loads them from the cache like every later run.
"""

from __future__ import annotations

import importlib
import pickle
import subprocess
import sys
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


def compile_apart(calls: list[KernelCall]) -> None:
    """Compile `calls` into numba's cache in a child process; this one then loads them from the cache at their
    first call. A kernel compiled in the process that runs it can round differently from the same kernel loaded
    from the cache (olmoe-shape: 3e-6 in a first decode step), and compiling holds LLVM's memory: apart, a first
    run gives what every later run gives and keeps none of that memory. If the child fails, they compile here."""
    if not calls:
        return
    work = pickle.dumps([(c.kernel.py_func.__module__, c.kernel.py_func.__name__, c.args) for c in calls])
    child = subprocess.run([sys.executable, "-m", "moedge.runtime.jit_cache"], input=work, capture_output=True)
    if child.returncode != 0:
        compile_calls(calls)


if __name__ == "__main__":  # compile_apart's child: the calls come pickled on stdin
    for module, name, args in pickle.loads(sys.stdin.buffer.read()):
        getattr(importlib.import_module(module), name).compile(args)
