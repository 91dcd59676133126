"""How to export: one frozen value passed from the CLI / `export()` down to every writer."""

from __future__ import annotations

from dataclasses import dataclass

from ..quant import GROUP_SIZES
from .source import ExportError


@dataclass(frozen=True)
class ExportOptions:
    """`group_size`: int8 scales per group of that many inputs (None: one per output channel);
    `float_experts`: keep experts and head float32; `dense_int8`: attention and dense-FFN matrices int8
    (MatMulNBits); `full_graph`: add a whole-model graph (a benchmark peer); `force`: replace an existing
    bundle; `show_progress`: a progress bar."""

    group_size: int | None = None
    float_experts: bool = False
    dense_int8: bool = False
    full_graph: bool = False
    force: bool = False
    show_progress: bool = True

    def __post_init__(self):
        if self.group_size is not None and self.group_size not in GROUP_SIZES:
            raise ExportError(f"--group-size must be one of {GROUP_SIZES} (or omitted for per-channel)")
        if self.float_experts and self.group_size:
            raise ExportError("a group size applies to int8 experts only")

    @property
    def quantize(self) -> bool:
        """Whether experts and the LM head are int8."""
        return not self.float_experts

    @property
    def group(self) -> int:
        """The group size as the manifest writes it: 0 for one scale per output channel."""
        return self.group_size or 0

    def quantization(self) -> dict[str, object]:
        """The manifest's `quantization` object."""
        return {"scheme": "int8" if self.quantize else "float32", "group_size": self.group,
                "dense_linears": "int8" if self.dense_int8 else "float32"}
