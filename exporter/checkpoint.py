"""Our own checkpoints: a folder with `moedge_spec.json`, `model.safetensors` and a tokenizer.

Canonical tensor names, float32, no pickle. `save_checkpoint` writes one from a
`Transformer`; `read_checkpoint` opens one lazily as a `Source` for the exporter.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..runtime.spec import ModelSpec, SpecError
from .model import Transformer
from .source import ExportError, Source

SPEC_FILE = "moedge_spec.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
GENERATION_FILE = "generation.json"


def save_checkpoint(model: Transformer, folder: str | Path, tokenizer_file: str | Path | None = None,
                    generation: dict | None = None) -> Path:
    """Write `model` (its spec and float32 weights) and optionally its tokenizer to `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE))
    (folder / SPEC_FILE).write_text(json.dumps(model.spec.to_dict(), indent=2))
    if tokenizer_file is not None:
        shutil.copyfile(tokenizer_file, folder / TOKENIZER_FILE)
    if generation:
        (folder / GENERATION_FILE).write_text(json.dumps(generation, indent=2))
    return folder


def read_checkpoint(folder: Path) -> Source:
    """Open a checkpoint folder; tensors are read one at a time on demand."""
    try:
        spec = ModelSpec.from_dict(json.loads((folder / SPEC_FILE).read_text())).validate()
    except (json.JSONDecodeError, SpecError, TypeError) as exc:
        raise ExportError(f"{folder / SPEC_FILE}: invalid model spec: {exc}") from None
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise ExportError(f"{folder} has {SPEC_FILE} but no {WEIGHTS_FILE}")
    handle = safe_open(str(weights), framework="pt")
    names = set(handle.keys())

    def get(name: str):
        if name not in names:
            raise ExportError(f"{weights}: tensor {name!r} is missing")
        return handle.get_tensor(name).to(torch.float32).numpy()

    tokenizer = folder / TOKENIZER_FILE
    generation_file = folder / GENERATION_FILE
    generation = json.loads(generation_file.read_text()) if generation_file.is_file() else {}
    return Source(spec=spec, get=get, tokenizer_file=tokenizer if tokenizer.is_file() else None,
                  generation=generation)


def load_model(folder: str | Path) -> Transformer:
    """The PyTorch model of a checkpoint folder (the fp32 reference)."""
    return source_model(read_checkpoint(Path(folder)))


def source_model(source: Source) -> Transformer:
    """The float32 PyTorch model of any export source (ours or a Hugging Face adapter's)."""
    model = Transformer(source.spec)
    model.load_state_dict({k: torch.from_numpy(source.get(k)) for k in model.state_dict()})
    return model.eval()
