"""What the exporter reads: a model spec, canonical tensors on demand, tokenizer, generation ids.

`open_source(path)` picks the reader: for a folder, our own checkpoint (`moedge_spec.json`) or a
Hugging Face checkpoint (`config.json`, through the adapter registry); for a file, GGUF (`gguf_source`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..runtime.errors import MoedgeError
from ..runtime.spec import ModelSpec


class ExportError(MoedgeError):
    """A source that cannot be exported, with the reason."""


@dataclass
class Source:
    """A model to export: `get(name)` returns a canonical tensor as float32 numpy; the tokenizer is a
    `tokenizer.json` file or its text (built from a GGUF file's metadata)."""

    spec: ModelSpec
    get: Callable[[str], np.ndarray]
    tokenizer_file: Path | None = None
    tokenizer_json: str | None = None
    generation: dict = field(default_factory=dict)


def open_source(path: str | Path) -> Source:
    """Open a checkpoint folder or GGUF file for export, or raise `ExportError` saying why it cannot be."""
    from .checkpoint import SPEC_FILE, read_checkpoint
    from .gguf_file import is_gguf

    path = Path(path)
    if path.is_file() and is_gguf(path):
        from .gguf_source import read_gguf

        source = read_gguf(path)
    elif not path.is_dir():
        raise ExportError(f"{path} is neither a folder (a checkpoint) nor a GGUF file")
    elif (path / SPEC_FILE).is_file():
        source = read_checkpoint(path)
    elif (path / "config.json").is_file():
        from .adapters import read_hf_checkpoint

        source = read_hf_checkpoint(path)
    else:
        raise ExportError(f"{path} holds neither {SPEC_FILE} (a moedge checkpoint) "
                          "nor config.json (a Hugging Face checkpoint)")
    source.get = _finite(source.get)
    return source


def _finite(get: Callable[[str], np.ndarray]) -> Callable[[str], np.ndarray]:
    """`get` that refuses a tensor holding NaN or an infinity, naming it."""

    def checked(name: str) -> np.ndarray:
        tensor = get(name)
        if not np.isfinite(np.asarray(tensor)).all():
            raise ExportError(f"tensor {name} holds NaN or infinite values; a bundle would compute garbage "
                              "from it (fix the checkpoint)")
        return tensor

    return checked
