"""The training text: Python's own documentation (`pydoc_data.topics`) and standard-library sources.

Both ship with every CPython, so the corpus needs no download. Each document (one help topic or
one top-level `Lib/*.py` module) goes to the train or the held-out split by a hash of its name,
so the split is fixed and never mixes the two. The text depends on the Python version that runs
this (the shipped model was trained with the version recorded in its training log).

    python samples/corpus.py heldout OUT_DIR [--limit N]   # write held-out documents as files
"""

from __future__ import annotations

import argparse
import sysconfig
import zlib
from pathlib import Path
from pydoc_data.topics import topics

HELDOUT_EVERY = 10  # one document in ten is held out


def documents() -> list[tuple[str, str]]:
    """All documents as (name, text), in a fixed order: help topics, then stdlib modules."""
    docs = [(f"topic/{name}", text) for name, text in sorted(topics.items())]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.glob("*.py")):
        docs.append((f"lib/{path.name}", path.read_text(encoding="utf-8", errors="replace")))
    return docs


def is_heldout(name: str) -> bool:
    return zlib.crc32(name.encode()) % HELDOUT_EVERY == 0


def split(docs: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train, held-out) by document name."""
    return [d for d in docs if not is_heldout(d[0])], [d for d in docs if is_heldout(d[0])]


def write_split(which: str, out: str | Path, limit: int | None = None) -> list[Path]:
    """Write the documents of one split (`train` or `heldout`) as text files under `out`."""
    train, heldout = split(documents())
    chosen = (train if which == "train" else heldout)[:limit]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in chosen:
        path = out / (name.replace("/", "__") + ".txt")
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=["train", "heldout"])
    parser.add_argument("out", help="folder to write the documents to")
    parser.add_argument("--limit", type=int, default=None, help="only the first N documents")
    args = parser.parse_args()
    print(f"wrote {len(write_split(args.which, args.out, args.limit))} documents to {args.out}")
