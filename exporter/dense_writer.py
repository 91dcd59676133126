"""The dense-weights file: every non-expert tensor, page-aligned, and the LM head (FORMAT.md, `dense`).

Tensors are float32, except that in quantized bundles the attention and dense-FFN matrices are stored as
MatMulNBits wants them (`quant.matmul_nbits`: 8- or 4-bit codes + scales) unless `float_dense`; the LM head
is int8, int4 with 4-bit dense linears (the int4 scheme's layout: the head is no graph's), or float32, with
its scales.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..quant import SCHEMES, nbits_codes, quant_error
from ..runtime.bundle import EMBEDDING, HEAD_NORM, HEAD_SCALE, HEAD_WEIGHT, NBITS, PAGE, TensorEntry
from ..runtime.tensor_names import LM_HEAD, dense_linear_names, dense_names
from .options import ExportOptions, nbits_block
from .source import ExportError, Source

DENSE_FILE = "dense.bin"


def _align(n: int, to: int) -> int:
    return -(-n // to) * to


def write_dense(source: Source, path: Path, options: ExportOptions):
    """Dense tensors (float32, or MatMulNBits codes for the linears: `ExportOptions.dense_scheme`), plus the LM
    head as `head.weight` (int8, int4 or float32) and `head.scale`, each at a page boundary (onnxruntime maps
    external data only at page-aligned offsets; elsewhere it copies).

    Returns the tensor index, the head's names, its quantization error and the dense linears' scheme.
    """
    spec, group_size, quantize = source.spec, options.group, options.quantize
    entries = {}
    head_source = EMBEDDING if spec.tie_embeddings else LM_HEAD
    dense_scheme = options.dense_scheme(spec)
    bits = NBITS.get(dense_scheme)  # None: float32
    linears = dense_linear_names(spec) if bits else set()

    def write(f, name: str, array: np.ndarray) -> None:
        f.write(b"\0" * (_align(f.tell(), PAGE) - f.tell()))
        entries[name] = TensorEntry(f.tell(), array.shape, str(array.dtype))
        f.write(np.ascontiguousarray(array).tobytes())

    with open(path, "wb") as f:
        for name in dense_names(spec):
            if name == LM_HEAD:
                continue
            tensor = np.asarray(source.get(name), dtype=np.float32)
            if name in linears:
                block = group_size if bits == 4 else nbits_block(tensor.shape[1], group_size)
                codes, scale = nbits_codes(tensor, block, bits)
                write(f, name, codes)
                write(f, f"{name}_scale", scale)
            else:
                write(f, name, tensor)
        weight = np.asarray(source.get(head_source), dtype=np.float32)
        scheme = SCHEMES[options.head_scheme(dense_scheme)]
        try:
            head = scheme.quantize(weight, group_size)
        except ValueError as exc:
            raise ExportError(f"cannot quantize the LM head: {exc}") from None
        if quantize or not spec.tie_embeddings:
            write(f, HEAD_WEIGHT, scheme.pack(head.q))
        write(f, HEAD_SCALE, head.scale)
    names = {"norm": HEAD_NORM, "weight": HEAD_WEIGHT if HEAD_WEIGHT in entries else head_source, "scale": HEAD_SCALE}
    return entries, names, asdict(quant_error(weight, head)), dense_scheme

