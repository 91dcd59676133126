"""`read_gguf`: a GGUF file opened as an export `Source` through the Hugging Face adapter registry.

The metadata becomes the family's config (`gguf_config`), its adapter the `ModelSpec`; tensors are
found by the one canonical <-> GGUF name table (`gguf_names`), q/k rows of interleaved-RoPE
architectures are put back in rotate-half order, and every tensor is dequantized when the writer asks
for it. Before anything is written, every canonical tensor must be present with its shape and every
tensor of the file must be used (one nobody reads, like llama3's `rope_freqs`, means a feature the
bundle would silently drop).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..runtime.spec import ModelSpec
from ..runtime.tensor_names import template
from .adapters.registry import adapter_for
from .gguf_config import gguf_config
from .gguf_file import GGUFFile
from .gguf_names import INTERLEAVED_ROPE, ROPE_PERMUTED, gguf_name, rope_rotate_half
from .gguf_tokenizer import gguf_generation, gguf_tokenizer_json
from .model import canonical_shapes
from .source import ExportError, Source

EMBEDDING_TENSOR = "token_embd.weight"


def _sources(file: GGUFFile, shapes: dict[str, tuple[int, ...]]) -> dict[str, str]:
    """Canonical name -> GGUF name, every one present with its shape, every tensor of the file used."""
    sources = {}
    for name, shape in shapes.items():
        theirs = gguf_name(name)
        if theirs not in file:
            raise ExportError(f"{file.path}: tensor {theirs} (for {name}) is missing")
        if _squeezed(file.shape(theirs)) != _squeezed(shape):  # llama.cpp drops unit dims (the shared gate)
            raise ExportError(f"{file.path}: tensor {theirs} has the shape {list(file.shape(theirs))}, "
                              f"expected {list(shape)}")
        sources[name] = theirs
    unused = sorted(set(file.tensors) - set(sources.values()))
    if unused:
        raise ExportError(f"{file.path}: {len(unused)} tensor(s) are not part of a supported "
                          f"{file.metadata['general.architecture']} model, e.g. {unused[0]}")
    return sources


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1)


def _rope_heads(spec: ModelSpec, name: str) -> int | None:
    """The head count to un-permute `name` by, if it is a q/k matrix stored in interleaved order."""
    key, _ = template(name)
    return (spec.n_heads if "wq" in key else spec.n_kv_heads) if key.endswith(ROPE_PERMUTED) else None


def read_gguf(path: str | Path) -> Source:
    """Open a GGUF file for export; tensors are dequantized one at a time on demand."""
    path = Path(path)
    file = GGUFFile(path)
    if EMBEDDING_TENSOR not in file:
        raise ExportError(f"{path}: tensor {EMBEDDING_TENSOR} is missing")
    config = gguf_config(str(path), file.metadata, set(file.tensors), file.shape(EMBEDDING_TENSOR)[0])
    spec = adapter_for(config).checked_spec()
    shapes = canonical_shapes(spec)
    sources = _sources(file, shapes)
    permuted = file.metadata["general.architecture"] in INTERLEAVED_ROPE

    def get(name: str) -> np.ndarray:
        if name not in sources:
            raise ExportError(f"{name!r} is not a tensor of this model")
        tensor = file.get(sources[name]).reshape(shapes[name])
        heads = _rope_heads(spec, name) if permuted else None
        return rope_rotate_half(tensor, heads) if heads else tensor

    return Source(spec=spec, get=get, tokenizer_json=gguf_tokenizer_json(path, file.metadata),
                  generation=gguf_generation(file.metadata))
