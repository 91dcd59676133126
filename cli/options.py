"""argparse value types that validate a flag and name it when it is wrong, and output-path checks.

A type raises `argparse.ArgumentTypeError`; argparse puts the option's name in front of the
message (`argument --threads: must be an integer >= 1, got '-1'`).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
from collections.abc import Callable
from pathlib import Path

from moedge.runtime.errors import InputError


def integer(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """A type for a whole number in [lo, hi]."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if value < lo or hi is not None and value > hi:
            bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
            raise argparse.ArgumentTypeError(f"must be a whole number {bound}, got {text!r}")
        return value
    return parse


def token_ids(text: str) -> list[int]:
    """A type for token ids: `1,2,3` (or separated by spaces)."""
    parts = text.replace(",", " ").split()
    if not parts or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"must be token ids like 1,2,3, got {text!r}")
    return [int(p) for p in parts]


def size(text: str) -> int:
    """A type for a memory size: 1G, 512M, 300000000 (binary units; at least 16M)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    clean = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = units.get(clean[-1:], 1)
    try:
        value = float(clean[:-1] if clean[-1:] in units else clean) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a size like 1G, 512M or 300000000, got {text!r}") from None
    if not math.isfinite(value) or value < 16 << 20:
        raise argparse.ArgumentTypeError(f"must be at least 16M, got {text!r}")
    return int(value)


def number(lo: float, hi: float = math.inf, lo_open: bool = False) -> Callable[[str], float]:
    """A type for a finite number in [lo, hi] ((lo, hi] with `lo_open`)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        if not math.isfinite(value) or value < lo or (lo_open and value == lo) or value > hi:
            bound = ("(" if lo_open else "[") + f"{lo:g}, {hi:g}]" if math.isfinite(hi) else \
                (f"> {lo:g}" if lo_open else f">= {lo:g}")
            raise argparse.ArgumentTypeError(f"must be a finite number {bound}, got {text!r}")
        return value
    return parse


def output_file(suffix: str | None = None, companion: str | None = None) -> Callable[[str], str]:
    """A type for a file to write (and, with `companion`, the file of that suffix beside it): not a folder, in a
    folder that exists and is writable, itself writable if it exists (checked before any work)."""
    def check(path: Path) -> None:
        if path.is_dir():
            raise argparse.ArgumentTypeError(f"{str(path)!r} is a folder, not a file")
        folder = path.parent if str(path.parent) else Path(".")
        if not folder.is_dir():
            raise argparse.ArgumentTypeError(f"the folder {str(folder)!r} does not exist")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise argparse.ArgumentTypeError(f"the folder {str(folder)!r} is not writable")
        if path.exists() and not os.access(path, os.W_OK):
            raise argparse.ArgumentTypeError(f"{str(path)!r} exists and is not writable")

    def parse(text: str) -> str:
        path = Path(text)
        if suffix and path.suffix.lower() != suffix:
            raise argparse.ArgumentTypeError(f"must name a {suffix} file, got {text!r}")
        check(path)
        if companion:
            check(path.with_suffix(companion))
        return text
    return parse


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


EXTRAS = {"torch": "export", "onnx": "export", "safetensors": "export", "matplotlib": "plot", "starlette": "serve",
          "uvicorn": "serve", "sse_starlette": "serve"}


def require(*modules: str, purpose: str) -> None:
    """Raise `InputError` naming the extra to install if one of `modules` is not importable."""
    missing = [m for m in modules if not _importable(m)]
    if missing:
        extra = EXTRAS[missing[0]]
        raise InputError(f"{purpose} needs {', '.join(missing)}: pip install 'moedge[{extra}]'")
