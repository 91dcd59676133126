"""A GGUF file opened with the `gguf` package's reader: metadata up front, tensors dequantized one at a time.

The reader memory-maps the file; `get` dequantizes one tensor (gguf's own dequantization of each
type) to float32 in numpy order ([out, in], experts [E, out, in]), so reading needs memory for one
tensor, not for the file. A corrupt or truncated file is refused with the reader's reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .source import ExportError

GGUF_MAGIC = b"GGUF"
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
                   "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")


def is_gguf(path: Path) -> bool:
    """Whether `path` is a file starting with the GGUF magic."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


class GGUFFile:
    """The metadata and tensors of one GGUF file."""

    def __init__(self, path: Path):
        try:
            import gguf
        except ImportError:
            raise ExportError("importing GGUF files needs the gguf package: pip install 'moedge[gguf]'") from None
        self.path = path
        try:
            reader = gguf.GGUFReader(path)
            self.metadata: dict[str, Any] = {key: f.contents() for key, f in reader.fields.items()
                                             if not key.startswith("GGUF.")}
        except (ValueError, KeyError, IndexError, TypeError, OSError, UnicodeDecodeError) as exc:
            raise ExportError(f"{path}: not a readable GGUF file ({type(exc).__name__}: {exc})") from None
        self.tensors = {t.name: t for t in reader.tensors}
        self._dequantize = gguf.quants.dequantize
        odd = next((t for t in self.tensors.values() if t.tensor_type.name not in SUPPORTED_TYPES), None)
        if odd is not None:
            raise ExportError(f"{path}: tensor {odd.name} is {odd.tensor_type.name}, a type not supported "
                              f"(supported: {', '.join(SUPPORTED_TYPES)})")

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def shape(self, name: str) -> tuple[int, ...]:
        """The tensor's shape in numpy order (GGUF lists dimensions innermost first)."""
        return tuple(int(d) for d in reversed(self.tensors[name].shape))

    def get(self, name: str) -> np.ndarray:
        """The tensor `name` dequantized to float32, in numpy order."""
        tensor = self.tensors[name]
        try:
            values = self._dequantize(tensor.data, tensor.tensor_type)
        except (ValueError, TypeError) as exc:
            raise ExportError(f"{self.path}: cannot dequantize {name} ({tensor.tensor_type.name}): {exc}") from None
        return np.asarray(values, dtype=np.float32).reshape(self.shape(name))
