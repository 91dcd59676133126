"""The dense-weights file: every non-expert tensor, page-aligned, and the LM head (FORMAT.md, `dense`).

Tensors are float32, except that in int8 bundles the attention and dense-FFN matrices are stored as
MatMulNBits wants them (unsigned codes + scales) unless `float_dense`; the LM head is int8 (or float32)
with its scales.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..quant import SCHEMES, quant_error, quantize_int8, to_unsigned
from ..runtime.bundle import EMBEDDING, HEAD_NORM, HEAD_SCALE, HEAD_WEIGHT, PAGE, TensorEntry
from ..runtime.tensor_names import LM_HEAD, dense_linear_names, dense_names
from .model import canonical_shapes
from .options import ExportOptions, nbits_block
from .source import ExportError, Source

DENSE_FILE = "dense.bin"


def _align(n: int, to: int) -> int:
    return -(-n // to) * to


def _int8_codes(weight: np.ndarray, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    """A dense linear as MatMulNBits wants it: uint8 codes q + 128 [out, in/b, b] and scales [out, in/b]."""
    block = nbits_block(weight.shape[1], group_size)
    q = quantize_int8(weight, block)
    codes = to_unsigned(q.q).reshape(weight.shape[0], -1, block)
    return codes, q.scale


def write_dense(source: Source, path: Path, options: ExportOptions):
    """Dense tensors (float32, or int8 codes for the linears: `ExportOptions.dense_int8`), plus the LM head
    as `head.weight` (int8 or float32) and `head.scale`, each at a page boundary (onnxruntime maps
    external data only at page-aligned offsets; elsewhere it copies).

    Returns the tensor index, the head's names, its quantization error and whether the linears are int8.
    """
    spec, group_size, quantize = source.spec, options.group, options.quantize
    entries = {}
    head_source = EMBEDDING if spec.tie_embeddings else LM_HEAD
    shapes = canonical_shapes(spec)
    linears = dense_linear_names(spec)
    int8_linears = linears if options.dense_int8([shapes[n][1] for n in linears if n in shapes]) else set()

    def write(f, name: str, array: np.ndarray) -> None:
        f.write(b"\0" * (_align(f.tell(), PAGE) - f.tell()))
        entries[name] = TensorEntry(f.tell(), array.shape, str(array.dtype))
        f.write(np.ascontiguousarray(array).tobytes())

    with open(path, "wb") as f:
        for name in dense_names(spec):
            if name == LM_HEAD:
                continue
            tensor = np.asarray(source.get(name), dtype=np.float32)
            if name in int8_linears:
                codes, scale = _int8_codes(tensor, group_size)
                write(f, name, codes)
                write(f, f"{name}_scale", scale)
            else:
                write(f, name, tensor)
        weight = np.asarray(source.get(head_source), dtype=np.float32)
        try:
            head = SCHEMES["int8" if quantize else "float32"].quantize(weight, group_size)
        except ValueError as exc:
            raise ExportError(f"cannot quantize the LM head: {exc}") from None
        if quantize or not spec.tie_embeddings:
            write(f, HEAD_WEIGHT, head.q)
        write(f, HEAD_SCALE, head.scale)
    names = {"norm": HEAD_NORM, "weight": HEAD_WEIGHT if HEAD_WEIGHT in entries else head_source, "scale": HEAD_SCALE}
    return entries, names, asdict(quant_error(weight, head)), bool(int8_linears)

