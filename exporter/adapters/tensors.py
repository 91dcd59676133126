"""The tensors of a Hugging Face folder (one `.safetensors` file or shards), read one at a time.

Only the index (names, shapes) is read up front; `get` reads one tensor and converts it to
float32, so exporting needs memory for about one tensor, not for the checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from ..source import ExportError

INDEX_FILE = "model.safetensors.index.json"


class SafetensorsFolder:
    """Name → tensor over every safetensors file of a checkpoint folder."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.files = {name: folder / file for name, file in _weight_map(folder).items()}
        self._handles: dict[Path, object] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def names(self) -> set[str]:
        return set(self.files)

    def get(self, name: str) -> np.ndarray:
        """The tensor `name` as float32 numpy."""
        if name not in self.files:
            raise ExportError(f"{self.folder}: tensor {name!r} is missing")
        path = self.files[name]
        if path not in self._handles:
            self._handles[path] = safe_open(str(path), framework="pt")
        return self._handles[path].get_tensor(name).to(torch.float32).numpy()


def _weight_map(folder: Path) -> dict[str, str]:
    index = folder / INDEX_FILE
    if index.is_file():
        try:
            return dict(json.loads(index.read_text())["weight_map"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ExportError(f"{index}: invalid index: {exc}") from None
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickled = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt"))
        hint = f" (found {', '.join(pickled)}: pickle checkpoints are not read)" if pickled else ""
        raise ExportError(f"{folder} holds no .safetensors weights{hint}")
    weight_map = {}
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            weight_map.update(dict.fromkeys(handle.keys(), path.name))
    return weight_map
