"""`read_hf_checkpoint`: a Hugging Face folder opened as an export `Source` through its family adapter.

Before anything is written, every canonical tensor's source is resolved and its shape checked
against the canonical model (built on the meta device: no memory), and every source tensor must
be used: a tensor nobody reads (an o_proj bias, a MLP bias, ...) means a feature the bundle would
silently drop, so the export refuses it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...runtime.spec import ModelSpec
from ..model import canonical_shapes
from ..source import ExportError, Source
from .adapter import Adapter
from .config import HFConfig
from .generation import generation_defaults, tokenizer_file
from .registry import adapter_for
from .tensors import SafetensorsFolder


def _check_coverage(adapter: Adapter, spec: ModelSpec, tensors: SafetensorsFolder, names: list[str]) -> None:
    used = set()
    for name in names:
        sources = adapter.sources(spec, tensors, name)
        missing = [s for s in sources if s not in tensors]
        if missing:
            raise ExportError(f"{tensors.folder}: tensor {missing[0]!r} (for {name}) is missing")
        used.update(sources)
    unused = sorted(n for n in tensors.names() - used if not adapter.is_ignored(spec, n))
    if unused:
        raise ExportError(f"{tensors.folder}: {len(unused)} tensor(s) are not part of a supported "
                          f"{adapter.config.architecture}, e.g. {unused[0]!r} (an unsupported config option?)")


def read_hf_checkpoint(folder: str | Path) -> Source:
    """Open a Hugging Face checkpoint folder for export; tensors are read one at a time on demand."""
    folder = Path(folder)
    config = HFConfig.load(folder)
    adapter = adapter_for(config)
    spec = adapter.checked_spec()
    tensors = SafetensorsFolder(folder)
    shapes = canonical_shapes(spec)
    _check_coverage(adapter, spec, tensors, list(shapes))

    def get(name: str) -> np.ndarray:
        if name not in shapes:
            raise ExportError(f"{name!r} is not a tensor of this model")
        array = adapter.read(spec, tensors, name)
        if array.shape != shapes[name]:
            raise ExportError(f"{folder}: {', '.join(adapter.sources(spec, tensors, name)[:1])} gives {name} "
                              f"the shape {list(array.shape)}, expected {list(shapes[name])}")
        return array

    return Source(spec=spec, get=get, tokenizer_file=tokenizer_file(folder),
                  generation=generation_defaults(folder, config))
