"""How to export: one frozen value passed from the CLI / `export()` down to every writer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..quant import GROUP_SIZES, SCHEMES
from ..runtime.bundle import default_head_scheme
from ..runtime.spec import ModelSpec
from ..runtime.tensor_names import dense_linear_names
from .model import canonical_shapes
from .source import ExportError

DEFAULT_INT4_GROUP = 32


@dataclass(frozen=True)
class ExportOptions:
    """`bits`: 8 (int8 experts, the default) or 4 (int4 experts, per group: 32 unless `group_size` says);
    `group_size`: scales per group of that many inputs (None: one per output channel, int8 only);
    `int8_fraction`: with bits 4, the share of experts kept int8 (a mixed bundle, chosen on `calibration`
    text, see `mixed_precision`);
    `dense_bits`: with bits 4, the attention/dense-FFN matrices and the LM head at 4 bits (MatMulNBits bits 4
    and the int4 scheme, groups of `group`), or 8 (int8, the default);
    `head_bits`: the LM head at 8 (int8) or 4 bits (int4, groups of `group`), whatever `dense_bits` says (by
    default the head follows the dense linears);
    `float_experts`: keep every weight float32 (no quantization); `float_dense`: keep the attention and
    dense-FFN matrices float32 while experts and head are int8 (by default they are int8 too, run as
    MatMulNBits, when every input dimension is a multiple of 16); `full_graph`: add a whole-model graph
    (a benchmark peer); `force`: replace an existing bundle; `show_progress`: a progress bar."""

    group_size: int | None = None
    bits: int = 8
    int8_fraction: float = 0.0
    dense_bits: int | None = None
    head_bits: int | None = None
    calibration: Path | None = None
    float_experts: bool = False
    float_dense: bool = False
    full_graph: bool = False
    force: bool = False
    show_progress: bool = True

    def __post_init__(self):
        if self.group_size is not None and self.group_size not in GROUP_SIZES:
            raise ExportError(f"--group-size must be one of {GROUP_SIZES} (or omitted for per-channel)")
        if self.bits not in (4, 8):
            raise ExportError(f"--bits must be 4 or 8, got {self.bits}")
        if self.float_experts and (self.group_size or self.bits != 8 or self.dense_bits or self.head_bits):
            raise ExportError("--float-experts keeps every weight float32: no --group-size, --bits, --dense-bits or "
                              "--head-bits")
        if self.dense_bits not in (None, 4, 8):
            raise ExportError(f"--dense-bits must be 4 or 8, got {self.dense_bits}")
        if self.dense_bits == 4 and self.bits != 4:
            raise ExportError("--dense-bits 4 needs --bits 4 (4-bit weights come in groups: --group-size)")
        if self.head_bits not in (None, 4, 8):
            raise ExportError(f"--head-bits must be 4 or 8, got {self.head_bits}")
        if self.head_bits == 4 and self.bits != 4:
            raise ExportError("--head-bits 4 needs --bits 4 (4-bit weights come in groups: --group-size)")
        if self.dense_bits and self.float_dense:
            raise ExportError("--float-dense keeps the dense linears float32: no --dense-bits")
        if not 0.0 <= self.int8_fraction < 1.0 or (self.int8_fraction and self.bits != 4):
            raise ExportError("--int8-budget is the share of experts kept int8 in a 4-bit export: "
                              "0 <= it < 1, with --bits 4")
        if self.calibration is not None and not self.int8_fraction:
            raise ExportError("--calibration chooses the int8 experts of --int8-budget: give both")
        if self.full_graph and self.bits != 8:
            raise ExportError("--full-graph reads int8 or float32 experts, not int4")

    @property
    def quantize(self) -> bool:
        """Whether experts and the LM head are int8."""
        return not self.float_experts

    @property
    def scheme(self) -> str:
        """The experts' scheme: float32, int8, int4 (quant.SCHEMES) or mixed (int4 and int8 experts)."""
        return "float32" if self.float_experts else "mixed" if self.int8_fraction else f"int{self.bits}"

    @property
    def group(self) -> int:
        """The group size as the manifest writes it: 0 for one scale per output channel (int4: 32 by default)."""
        return self.group_size or (DEFAULT_INT4_GROUP if self.bits == 4 else 0)

    def head_scheme(self, dense_scheme: str) -> str:
        """The LM head's scheme: `head_bits`' if given, else as the dense linears (`bundle.default_head_scheme`)."""
        return f"int{self.head_bits}" if self.head_bits else default_head_scheme(self.scheme, dense_scheme)

    def check_model(self, spec: ModelSpec) -> None:
        """Refuse, before any work, a scheme and group size that the model's experts or head cannot take."""
        if self.head_scheme(self.dense_scheme(spec)) == "int4" and spec.hidden_size % self.group:
            raise ExportError(f"a 4-bit LM head needs the hidden size {spec.hidden_size} divisible by the group size "
                              f"{self.group} (use --head-bits 8)")
        if not spec.is_moe:
            return
        try:
            for width in (spec.hidden_size, spec.expert_intermediate_size):
                SCHEMES["int4" if self.scheme == "mixed" else self.scheme].check_group(width, self.group)
        except ValueError as exc:
            raise ExportError(f"cannot quantize experts: {exc}") from None

    def dense_scheme(self, spec: ModelSpec) -> str:
        """How the attention/dense-FFN matrices are stored — "float32", "int8" or "int4" (the LM head then too) —
        for this model's input dimensions: int8 where every input has a MatMulNBits block, else float32; 4 bits
        (`dense_bits`) need every input, the head's too, divisible by the group, else they are refused."""
        if not self.quantize or self.float_dense:
            return "float32"
        shapes = canonical_shapes(spec)
        widths = {name: shapes[name][1] for name in sorted(dense_linear_names(spec)) if name in shapes}
        if self.dense_bits == 4:
            misfit = next(((n, w) for n, w in (*widths.items(), ("the LM head", spec.hidden_size))
                           if w % self.group), None)
            if misfit is not None:
                raise ExportError(f"--dense-bits 4 needs every dense input dimension divisible by the group size "
                                  f"{self.group}: {misfit[0]} has {misfit[1]} (use --dense-bits 8)")
            return "int4"
        return "int8" if all(nbits_block(n, self.group) for n in widths.values()) else "float32"

    def quantization(self, dense_linears: str) -> dict[str, object]:
        """The manifest's `quantization` object: `head` only where `head_bits` makes it differ from the default
        (a bundle without it stays readable by runtimes from before the field)."""
        head = self.head_scheme(dense_linears)
        apart = {"head": head} if head != default_head_scheme(self.scheme, dense_linears) else {}
        return {"scheme": self.scheme, "group_size": self.group, "dense_linears": dense_linears, **apart}


def nbits_block(in_features: int, group_size: int) -> int | None:
    """The MatMulNBits block of an int8 dense linear: the group size, else the largest power of two
    ≤ 128 dividing the input; None when there is none (the linears then stay float32)."""
    return next((b for b in ((group_size,) if group_size else (128, 64, 32, 16)) if in_features % b == 0), None)
