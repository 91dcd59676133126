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
    ExpertLayout,
    ExpertsIndex,
    expert_span_layout,
    pack_expert_span,
)
from ..runtime.integrity import digest, expert_seed
from ..runtime.tensor_names import expert_names
from .options import ExportOptions
from .source import ExportError, Source

EXPERTS_FILE = "experts.bin"


def write_experts(source: Source, path: Path, options: ExportOptions, progress: tqdm,
                  schemes: dict[int, list[str]] | None = None):
    """Write the experts file; return its index and each layer's quantization error (the manifest's report).

    `schemes` gives each expert of each MoE layer its scheme (a mixed bundle); else all are `options.scheme`.
    """
    spec, group_size, n_experts = source.spec, options.group, source.spec.routing.n_experts
    schemes = schemes or {layer: [options.scheme] * n_experts for layer in spec.moe_layers}
    used = sorted({s for layer in schemes.values() for s in layer})
    layouts = {s: ExpertLayout(*reversed(expert_span_layout(spec, group_size, s))) for s in used}
    shapes = {"gate": (spec.expert_intermediate_size, spec.hidden_size),
              "up": (spec.expert_intermediate_size, spec.hidden_size),
              "down": (spec.hidden_size, spec.expert_intermediate_size)}
    offsets, checksums, report = {}, {}, {}
    with open(path, "wb") as f:
        f.write(EXPERTS_HEADER.pack(EXPERTS_MAGIC, FORMAT_VERSION, PAGE).ljust(PAGE, b"\0"))
        for layer in spec.moe_layers:
            quantized, errors = {s: {} for s in used}, []
            for part, name in expert_names(layer).items():
                weight = source.get(name)  # [E, out, in]
                if weight.shape != (n_experts, *shapes[part]):
                    raise ExportError(f"{name} has shape {list(weight.shape)}, expected {[n_experts, *shapes[part]]}")
                for s in used:
                    quantized[s][part] = SCHEMES[s].quantize(weight, group_size)
                errors += [quant_error(weight[e], _expert_slice(quantized[schemes[layer][e]][part], e))
                           for e in range(n_experts)]
            offsets[layer], checksums[layer] = [], []
            for e, s in enumerate(schemes[layer]):
                offsets[layer].append(f.tell())
                parts = quantized[s]
                data = pack_expert_span(layouts[s].tensors, layouts[s].span_bytes,
                                        {**{p: SCHEMES[s].pack(t.q[e]) for p, t in parts.items()},
                                         **{f"{p}_scale": t.scale[e] for p, t in parts.items()}})
                checksums[layer].append(digest(data, seed=expert_seed(layer, e)))
                f.write(data)
            report[str(layer)] = {"max_abs": max(x.max_abs for x in errors),
                                  "rel_fro_max": max(x.rel_fro for x in errors),
                                  "cosine_min": min(x.cosine for x in errors)}
            progress.update(1)
    return ExpertsIndex(EXPERTS_FILE, group_size, layouts, {k: tuple(v) for k, v in schemes.items()},
                        offsets, checksums), report


def _expert_slice(t: QuantizedTensor, e: int) -> QuantizedTensor:
    return QuantizedTensor(q=t.q[e], scale=t.scale[e], group_size=t.group_size)
