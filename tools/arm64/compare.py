"""`make check-arm64`, aarch64 side: with only the runtime installed, recompute every bundle's logits and
compare them with the x86 reference, then generate through the CLI and run `moedge bench` once.

    python compare.py CHECK_DIR     (the folder `reference.py` wrote)

Prints one line per comparison and ends with "N passed, N failed"; exits 1 if anything failed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from logits import THREADS, TOLERANCE, trace, worst_error  # noqa: E402

RUNTIME = ("numpy", "onnxruntime", "numba", "llvmlite", "tokenizers")
EXPORT_ONLY = ("torch", "onnx", "transformers", "safetensors")


class Tally:
    """Counts the checks and prints each as it ends."""

    def __init__(self):
        self.passed = self.failed = 0
        self.start = time.perf_counter()

    def check(self, ok: bool, line: str) -> None:
        self.passed += ok
        self.failed += not ok
        print(f"[{time.perf_counter() - self.start:6.0f} s] {'ok  ' if ok else 'FAIL'} {line}", flush=True)


def installed(tally: Tally) -> None:
    """The runtime-only install: its versions, and nothing of the exporter's."""
    versions = ", ".join(f"{name} {importlib.metadata.version(name)}" for name in RUNTIME)
    print(f"{platform.machine()}, Python {platform.python_version()}: {versions}", flush=True)
    present = [name for name in EXPORT_ONLY if importlib.util.find_spec(name) is not None]
    tally.check(not present, f"runtime-only install (no {', '.join(EXPORT_ONLY)})"
                + (f": found {', '.join(present)}" if present else ""))


def logits(tally: Tally, bundle: Path, reference: np.lib.npyio.NpzFile) -> None:
    """Every `logits.trace` array within its activations' TOLERANCE of the reference's range."""
    for activations, tolerance in TOLERANCE.items():
        for threads in THREADS:
            for key, got in trace(bundle, threads, activations).items():
                error = worst_error(got, reference[f"{bundle.stem}/{key}"])
                tally.check(error <= tolerance, f"{bundle.stem:14s} {key:30s} max |arm64 - x86| = {error:.1e} of "
                            f"the logit range (tolerance {tolerance:.0e})")


def moedge(*args: str) -> subprocess.CompletedProcess:
    """The installed `moedge` command."""
    return subprocess.run([str(Path(sys.executable).parent / "moedge"), *args], capture_output=True, text=True)


def generate(tally: Tally, bundle: Path, prompt: str, new_tokens: int, x86_text: str) -> None:
    """`moedge run` greedy: it must generate; the text is compared with x86's for information (a near tie
    between two tokens may pick the other one without any logit being off)."""
    result = moedge("run", str(bundle), "--prompt", prompt, "-n", str(new_tokens))  # text on stdout, stats on stderr
    ok = result.returncode == 0 and f"{new_tokens} tokens" in result.stderr
    same = result.stdout.startswith(x86_text)
    last = result.stderr.strip().splitlines()[-2:] if ok else result.stderr.strip().splitlines()[-1:]
    tally.check(ok, f"{bundle.stem:14s} moedge run: {' / '.join(last)}; text {'equals' if same else 'differs from'} "
                f"x86's: {(result.stdout.splitlines() or [''])[0]!r}")


def bench(tally: Tally, bundle: Path) -> None:
    """`moedge bench --estimate` once, short (its bandwidth probe is a kernel too)."""
    result = moedge("bench", str(bundle), "--threads", "1", "2", "--prompt-tokens", "16", "--new-tokens", "8",
                    "--repeat", "1", "--no-cold-start", "--estimate", "pi5")
    print(result.stdout.rstrip())
    tally.check(result.returncode == 0, f"{bundle.stem:14s} moedge bench"
                + ("" if result.returncode == 0 else f": {result.stderr.strip().splitlines()[-1:]}"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("check_dir", type=Path)
    folder = parser.parse_args().check_dir
    meta = json.loads((folder / "reference.json").read_text())
    reference = np.load(folder / "reference.npz")
    tally = Tally()
    installed(tally)
    for name, text in meta["texts"].items():
        bundle = folder / f"{name}.moedge"
        print(f"{name}: logits (numba compiles this scheme's kernels on first use: minutes under emulation)",
              flush=True)
        try:
            logits(tally, bundle, reference)
        except Exception as exc:  # a crash in one scheme's kernels is a failed check, the others still run
            tally.check(False, f"{name:14s} logits: {type(exc).__name__}: {exc}")
        generate(tally, bundle, meta["prompt"], meta["new_tokens"], text)
    bench(tally, folder / "default-moe.moedge")
    print(f"{tally.passed} passed, {tally.failed} failed")
    return 1 if tally.failed else 0


if __name__ == "__main__":
    sys.exit(main())
