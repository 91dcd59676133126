"""`make check-arm64`, x86 side: export the bundles the check covers and compute their reference logits.

    python tools/arm64/reference.py OUT_DIR

Writes OUT_DIR/<name>.moedge for every scheme the runtime supports, OUT_DIR/reference.npz (the logits of
`logits.trace` at each thread count, keyed "<name>/<key>") and OUT_DIR/reference.json (the greedy text
each bundle generates from `PROMPT`, for the CLI run on the other machine).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from moedge.exporter import export
from moedge.runtime import Model

sys.path.insert(0, str(Path(__file__).parent))
from logits import THREADS, TOLERANCE, trace  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
PROMPT, NEW_TOKENS = "def __init__(self", 16
BUNDLES = {  # name: (sample model, export options)
    "default-moe": ("default-moe", {}),
    "dense": ("dense", {}),
    "int8-group32": ("default-moe", {"group_size": 32}),
    "float-experts": ("default-moe", {"float_experts": True}),
    "float-dense": ("default-moe", {"float_dense": True}),
    "int4": ("default-moe", {"bits": 4}),
    "mixed": ("default-moe", {"bits": 4, "int8_fraction": 0.25}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    logits, texts = {}, {}
    for name, (sample, options) in BUNDLES.items():
        bundle = out / f"{name}.moedge"
        print(f"x86: exporting {name} ({options or 'defaults'}) and computing its reference logits", flush=True)
        export(SAMPLES / sample, bundle, force=True, show_progress=False, **options)
        for activations in TOLERANCE:
            for threads in THREADS:
                logits.update({f"{name}/{key}": value for key, value in trace(bundle, threads, activations).items()})
        tokens = Model.load(bundle, threads=1).generate(PROMPT, max_new_tokens=NEW_TOKENS)
        texts[name] = "".join(token.text for token in tokens)
    np.savez(out / "reference.npz", **logits)
    (out / "reference.json").write_text(json.dumps({"prompt": PROMPT, "new_tokens": NEW_TOKENS, "texts": texts},
                                                   indent=1))
    print(f"x86: wrote {len(BUNDLES)} bundles and {len(logits)} reference arrays to {out}")


if __name__ == "__main__":
    main()
