"""`moedge export`: a checkpoint folder in, a bundle folder out."""

from __future__ import annotations

from pathlib import Path

from ..runtime.bundle import Manifest
from .bundle_writer import write_bundle
from .options import ExportOptions
from .output import check_output
from .source import ExportError, open_source


def export(src: str | Path, out: str | Path, group_size: int | None = None, bits: int = 8, force: bool = False,
           show_progress: bool = True, float_experts: bool = False, full_graph: bool = False,
           float_dense: bool = False, int8_fraction: float = 0.0, calibration: str | Path | None = None,
           dense_bits: int | None = None, head_bits: int | None = None) -> Manifest:
    """Export the checkpoint folder `src` to the bundle `out`.

    Experts are int8 (`bits` 8) or int4 (`bits` 4, per group of 32 unless `group_size` says), the LM
    head int8; scales per output channel or per group of `group_size` inputs. With `bits` 4 and an
    `int8_fraction`, that share of the experts stays int8: those whose int4 round trip changes their
    layer's output most on `calibration` text (a mixed bundle; see `mixed_precision`). The attention and
    dense-FFN matrices are int8 too (run by onnxruntime's MatMulNBits with float activations, by the numba
    decode path with int8 blocks) unless `float_dense` or an input dimension is not a multiple of 16;
    with `bits` 4, `dense_bits` 4 stores them and the LM head at 4 bits in groups of `group_size` (see
    `ExportOptions.dense_scheme`); `head_bits` 8 or 4 sets the LM head's apart. `float_experts` keeps every
    weight float32 (for parity checks against a float reference). `full_graph` adds a whole-model ONNX graph
    computing every expert (a peer for benchmarks; the runtime ignores it).
    `force` replaces an existing bundle (and nothing that is not a bundle).
    """
    options = ExportOptions(group_size=group_size, bits=bits, float_experts=float_experts, float_dense=float_dense,
                            full_graph=full_graph, force=force, show_progress=show_progress,
                            int8_fraction=int8_fraction, calibration=Path(calibration) if calibration else None,
                            dense_bits=dense_bits, head_bits=head_bits)
    source_path, out_path = Path(src).resolve(), Path(out).absolute()
    if source_path == out_path.resolve() or out_path.resolve() in source_path.parents:
        raise ExportError(f"the bundle {out} would replace the checkpoint {src}: write it elsewhere")
    check_output(out_path, force)  # before any work: a refused output costs nothing
    return write_bundle(open_source(src), out_path, options)
