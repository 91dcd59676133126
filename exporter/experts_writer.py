"""The experts file: a header page, then every expert of every MoE layer as one page-aligned span
(FORMAT.md, `experts.bin`), quantized (or kept float32), each with its checksum."""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from ..quant import SCHEMES, QuantizedTensor, quant_error
from ..runtime.bundle import (
    EXPERTS_HEADER,
    EXPERTS_MAGIC,
    FORMAT_VERSION,
    PAGE,
    ExpertsIndex,
    expert_span_layout,
    pack_expert_span,
)
from ..runtime.integrity import digest, expert_seed
from ..runtime.tensor_names import expert_names
from .options import ExportOptions
from .source import ExportError, Source

EXPERTS_FILE = "experts.bin"


def write_experts(source: Source, path: Path, options: ExportOptions, progress: tqdm):
    """Write the experts file; return its index and each layer's quantization error (the manifest's report)."""
    spec, group_size, scheme = source.spec, options.group, SCHEMES[options.scheme]
    layout, span = expert_span_layout(spec, group_size, scheme.name)
    offsets, checksums, report = {}, {}, {}
    with open(path, "wb") as f:
        f.write(EXPERTS_HEADER.pack(EXPERTS_MAGIC, FORMAT_VERSION, PAGE).ljust(PAGE, b"\0"))
        for layer in spec.moe_layers:
            quantized, errors = {}, []
            for part, name in expert_names(layer).items():
                weight = source.get(name)  # [E, out, in]
                rows, stored_cols = layout[part].shape
                expected = (rows, stored_cols * scheme.codes_per_byte)
                if weight.shape != (spec.routing.n_experts, *expected):
                    raise ExportError(f"{name} has shape {list(weight.shape)}, expected "
                                      f"{[spec.routing.n_experts, *expected]}")
                quantized[part] = scheme.quantize(weight, group_size)
                errors += [quant_error(weight[e], _expert_slice(quantized[part], e))
                           for e in range(weight.shape[0])]
            offsets[layer], checksums[layer] = [], []
            for e in range(spec.routing.n_experts):
                offsets[layer].append(f.tell())
                data = pack_expert_span(layout, span, {**{p: scheme.pack(t.q[e]) for p, t in quantized.items()},
                                                       **{f"{p}_scale": t.scale[e] for p, t in quantized.items()}})
                checksums[layer].append(digest(data, seed=expert_seed(layer, e)))
                f.write(data)
            report[str(layer)] = {"max_abs": max(x.max_abs for x in errors),
                                  "rel_fro_max": max(x.rel_fro for x in errors),
                                  "cosine_min": min(x.cosine for x in errors)}
            progress.update(1)
    return ExpertsIndex(EXPERTS_FILE, span, group_size, layout, offsets, checksums), report


def _expert_slice(t: QuantizedTensor, e: int) -> QuantizedTensor:
    return QuantizedTensor(q=t.q[e], scale=t.scale[e], group_size=t.group_size)
