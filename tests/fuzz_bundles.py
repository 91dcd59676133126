"""A seeded mutation fuzzer for bundles: every outcome must be a one-line `MoedgeError` or identical logits.

Each mutation copies a good bundle and breaks it one way: a manifest field changed (and the manifest
re-sealed with a correct checksum, so that validation, not the checksum, must catch it; or left
unsealed), the manifest's raw bytes, a data file truncated, extended, bit-flipped, swapped with
another, replaced by an empty file, a folder, a FIFO or a symbolic link, or removed. The mutated
bundle is loaded and run (a prefill and a few decode steps); the outcome is one of

  error      a `MoedgeError` with a one-line message (load or run refused the bundle)
  identical  the logits equal the good bundle's bit for bit (the mutation changed nothing used)
  wrong      it ran and gave other logits without an error (a bug)
  crash      another exception type, or a message of several lines (a bug)
  hang       no answer within the time limit (a bug)

The test suite runs a few hundred mutations; run more by hand:

    .venv/bin/python tests/fuzz_bundles.py --mutations 10000 --seed 1
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from moedge.runtime import Model, MoedgeError
from moedge.runtime.integrity import CHECKSUM_FIELD, manifest_checksum

OUTCOMES = ("error", "identical", "wrong", "crash", "hang")
ODD_VALUES = [None, True, False, 0, -1, 1, 3, 2.5, -0.0, 1e308, 2 ** 31, 2 ** 63, 10 ** 12, 4096, 4097, "",
              "x", "../dense.bin", "/etc/passwd", "manifest.json", "dense.bin", "a" * 300, [], {}, [1, 2], {"a": 1},
              "int8", "float32", "moe", "dense", "softmax", "sigmoid", 1e-30, 123456789.0]
PROMPT = list(range(3, 27))  # 24 tokens: most experts of a tiny MoE are routed to
DECODE = [5, 7, 11]


def read_manifest_json(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def write_manifest_json(bundle: Path, data: dict, reseal: bool = True) -> None:
    """Write `data` as the manifest; with `reseal`, give it the checksum of its new content."""
    if reseal:
        data = {**data, CHECKSUM_FIELD: manifest_checksum(data)}
    (bundle / "manifest.json").write_text(json.dumps(data, indent=1))


def edit_manifest(bundle: Path, change, reseal: bool = True) -> None:
    """Apply `change(data)` to the manifest of `bundle` (in place), re-sealed unless told not to."""
    data = read_manifest_json(bundle)
    change(data)
    write_manifest_json(bundle, data, reseal)


def run_bundle(bundle: Path) -> np.ndarray:
    """The logits of a prefill and a few decode steps, stacked."""
    return run_model(Model.load(bundle, threads=1))


def run_model(model: Model) -> np.ndarray:
    """The logits of a prefill and a few decode steps of `model`, stacked."""
    session = model.session()
    rows = [session.prefill(PROMPT)]
    rows += [session.decode(t)[None] for t in DECODE]
    return np.concatenate(rows)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, (*prefix, i))


def _mutate_value(rng: random.Random, value):
    choices = [lambda: rng.choice(ODD_VALUES)]
    if type(value) is int:
        choices += [lambda: value + rng.choice([-4096, -64, -1, 1, 64, 4096]), lambda: value * 2, lambda: -value,
                    lambda: float(value), lambda: str(value)]
    if type(value) is float:
        choices += [lambda: value * rng.choice([0.5, 1.0001, 2, -1, 0]), lambda: int(value)]
    if isinstance(value, str):
        choices += [lambda: value + "x", lambda: value.upper(), lambda: value[::-1], lambda: "./" + value]
    if isinstance(value, list) and len(value) > 1:
        choices += [lambda: list(reversed(value)), lambda: value[:-1], lambda: value + value[-1:],
                    lambda: rng.sample(value, len(value))]
    if isinstance(value, dict):
        choices += [lambda: {**value, "unknown_field": 1}, lambda: dict(list(value.items())[:-1]) if value else None]
    return rng.choice(choices)()


def mutate_manifest(rng: random.Random, bundle: Path, reseal: bool) -> str:
    data = read_manifest_json(bundle)
    paths = [p for p in _paths(data) if p and p != (CHECKSUM_FIELD,)]
    path = rng.choice(paths)
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    action = rng.random()
    if action < 0.1 and isinstance(parent, dict):
        del parent[path[-1]]
        label = "delete"
    elif action < 0.15 and isinstance(parent, dict):
        parent[f"{path[-1]}_extra"] = copy.deepcopy(parent[path[-1]])
        label = "add field"
    else:
        parent[path[-1]] = _mutate_value(rng, parent[path[-1]])
        label = "change"
    write_manifest_json(bundle, data, reseal)
    return f"manifest field {'re-sealed' if reseal else 'unsealed'} ({label})"


def mutate_manifest_bytes(rng: random.Random, bundle: Path) -> str:
    path = bundle / "manifest.json"
    raw = bytearray(path.read_bytes())
    kind = rng.choice(["flip", "truncate", "deep", "bigint", "nan", "not object", "longname", "binary"])
    if kind == "flip":
        i = rng.randrange(len(raw))
        raw[i] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        raw = raw[:rng.randrange(len(raw))]
    elif kind == "deep":
        raw = b'{"format": "moedge-bundle", "format_version": 3, "model": ' + b"[" * 100000 + b"]" * 100000 + b"}"
    elif kind == "bigint":
        raw = raw.replace(b'"format_version": 3', b'"format_version": ' + b"9" * 5000, 1)
    elif kind == "nan":
        raw = raw.replace(b'"norm_eps": ', b'"norm_eps": NaN, "x": ', 1)
    elif kind == "not object":
        raw = b'[1, 2, 3]'
    elif kind == "longname":
        raw = raw.replace(b'"dense.bin"', b'"' + b"d" * 10000 + b'"', 1)
    else:
        raw = bytes(rng.randrange(256) for _ in range(200))
    path.write_bytes(bytes(raw))
    return f"manifest bytes ({kind})"


def _data_files(bundle: Path) -> list[Path]:
    return sorted(p for p in bundle.iterdir() if p.name != "manifest.json")


def mutate_file(rng: random.Random, bundle: Path) -> str:
    files = _data_files(bundle)
    target = rng.choice(files)
    size = target.stat().st_size
    kind = rng.choice(["flip", "flip", "flip", "truncate", "append", "swap", "empty", "remove", "folder", "fifo",
                       "symlink outside", "symlink inside", "dev zero", "zero page"])
    if kind == "flip" and size:
        with open(target, "r+b") as f:
            offset = rng.randrange(size)
            f.seek(offset)
            byte = f.read(1)[0]
            f.seek(offset)
            f.write(bytes([byte ^ (1 << rng.randrange(8))]))
    elif kind == "truncate":
        os.truncate(target, rng.randrange(size) if size else 0)
    elif kind == "append":
        with open(target, "ab") as f:
            f.write(b"\0" * rng.choice([1, 8, 4096]))
    elif kind == "swap":
        other = rng.choice([p for p in files if p != target] or [target])
        tmp = bundle / ".swap"
        os.replace(target, tmp)
        os.replace(other, target)
        os.replace(tmp, other)
    elif kind == "empty":
        target.write_bytes(b"")
    elif kind == "remove":
        target.unlink()
    elif kind == "folder":
        target.unlink()
        target.mkdir()
    elif kind == "fifo":
        target.unlink()
        os.mkfifo(target)
    elif kind in ("symlink outside", "symlink inside", "dev zero"):
        copy_path = bundle.parent / f"outside-{target.name}"
        shutil.copyfile(target, copy_path)
        source = {"symlink outside": copy_path, "symlink inside": rng.choice(files), "dev zero": Path("/dev/zero")}
        target.unlink()
        target.symlink_to(source[kind])
    elif kind == "zero page" and size:
        with open(target, "r+b") as f:
            f.seek(rng.randrange(-(-size // 4096)) * 4096)
            f.write(b"\0" * min(4096, size))
    return f"file {kind} ({target.suffix or target.name})"


def mutate(rng: random.Random, bundle: Path) -> str:
    """Break `bundle` (a copy) in one random way; return the kind of mutation."""
    roll = rng.random()
    if roll < 0.45:
        return mutate_manifest(rng, bundle, reseal=True)
    if roll < 0.55:
        return mutate_manifest(rng, bundle, reseal=False)
    if roll < 0.65:
        return mutate_manifest_bytes(rng, bundle)
    return mutate_file(rng, bundle)


class _Timeout(Exception):
    pass


@contextlib.contextmanager
def _time_limit(seconds: float):
    def expire(*_):
        raise _Timeout()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def outcome(bundle: Path, baseline: np.ndarray, seconds: float = 20.0) -> tuple[str, str]:
    """(outcome, detail) of loading and running `bundle` against the good bundle's logits."""
    try:
        with _time_limit(seconds):
            logits = run_bundle(bundle)
    except _Timeout:
        return "hang", ""
    except MoedgeError as exc:
        message = str(exc)
        return ("error", message) if message and "\n" not in message else ("crash", f"multi-line: {message!r}")
    except Exception as exc:  # anything else is a bug the fuzzer reports
        return "crash", f"{type(exc).__name__}: {exc}"
    return ("identical", "") if np.array_equal(logits, baseline) else ("wrong", "")


def fuzz(bundles: list[Path], mutations: int, seed: int, workdir: Path, show_progress: bool = False) -> dict:
    """Run `mutations` seeded mutations spread over `bundles`; return counts per kind × outcome and the bugs."""
    rng = random.Random(seed)
    baselines = {b: run_bundle(b) for b in bundles}
    table: dict[str, Counter] = {}
    bugs = []
    for i in range(mutations):
        source = bundles[i % len(bundles)]
        case = workdir / f"case-{i}"
        copy_dir = case / source.name
        shutil.copytree(source, copy_dir)
        kind = mutate(rng, copy_dir)
        result, detail = outcome(copy_dir, baselines[source])
        table.setdefault(kind, Counter())[result] += 1
        if result not in ("error", "identical"):
            bugs.append((i, source.name, kind, result, detail))
        shutil.rmtree(case, ignore_errors=True)
        if show_progress and (i + 1) % 500 == 0:
            print(f"{i + 1} mutations", file=sys.stderr)
    return {"table": table, "bugs": bugs}


def format_table(table: dict[str, Counter]) -> str:
    """A Markdown table: mutation kind × outcome, with totals."""
    lines = ["| mutation | " + " | ".join(OUTCOMES) + " |", "|---|" + "---|" * len(OUTCOMES)]
    totals = Counter()
    for kind in sorted(table):
        totals.update(table[kind])
        lines.append(f"| {kind} | " + " | ".join(str(table[kind][o]) for o in OUTCOMES) + " |")
    lines.append("| **total** | " + " | ".join(str(totals[o]) for o in OUTCOMES) + " |")
    return "\n".join(lines)


def export_samples(root: Path) -> list[Path]:
    from moedge.exporter import export

    samples = Path(__file__).resolve().parents[1] / "samples"
    out = []
    for name, src, group in (("default", "default-moe", None), ("default-g32", "default-moe", 32),
                             ("dense", "dense", None)):
        out.append(root / f"{name}.moedge")
        export(samples / src, out[-1], group_size=group, show_progress=False)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mutations", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bundles = export_samples(Path(tmp))
        start = time.perf_counter()
        result = fuzz(bundles, args.mutations, args.seed, Path(tmp) / "work", show_progress=True)
        elapsed = time.perf_counter() - start
    print(f"{args.mutations} mutations of {', '.join(b.name for b in bundles)} (seed {args.seed}) "
          f"in {elapsed:.0f} s\n")
    print(format_table(result["table"]))
    for bug in result["bugs"][:50]:
        print("BUG", *bug)
    sys.exit(1 if result["bugs"] else 0)


if __name__ == "__main__":
    main()
