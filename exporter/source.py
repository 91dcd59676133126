"""What the exporter reads: a model spec, canonical tensors on demand, tokenizer, generation ids.

`open_source(path)` picks the reader for a folder: our own checkpoint (`moedge_spec.json`)
or a Hugging Face checkpoint (`config.json`, through the adapter registry).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..runtime.spec import ModelSpec


class ExportError(Exception):
    """A source that cannot be exported, with the reason."""


@dataclass
class Source:
    """A model to export: `get(name)` returns a canonical tensor as float32 numpy."""

    spec: ModelSpec
    get: Callable[[str], np.ndarray]
    tokenizer_file: Path | None = None
    generation: dict = field(default_factory=dict)


def open_source(path: str | Path) -> Source:
    """Open a checkpoint folder for export, or raise `ExportError` saying why it cannot be."""
    from .checkpoint import SPEC_FILE, read_checkpoint

    path = Path(path)
    if not path.is_dir():
        raise ExportError(f"{path} is not a folder (expected a checkpoint folder)")
    if (path / SPEC_FILE).is_file():
        return read_checkpoint(path)
    if (path / "config.json").is_file():
        from .adapters import read_hf_checkpoint

        return read_hf_checkpoint(path)
    raise ExportError(f"{path} holds neither {SPEC_FILE} (a moedge checkpoint) "
                      "nor config.json (a Hugging Face checkpoint)")
