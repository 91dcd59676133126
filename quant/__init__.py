"""Weight quantization (numpy only): the scheme registry (float32, int8, int4), error metrics and
the packed layouts the runtime reads (the schemes', and onnxruntime MatMulNBits' for the dense linears)."""

from .activations import fake_quantize_activations, quantize_activations
from .int4 import pack_int4, quantize_int4, unpack_int4
from .int8 import (
    GROUP_SIZES,
    UNSIGNED_ZERO,
    QuantizedTensor,
    QuantMetrics,
    dequantize,
    from_unsigned,
    quant_error,
    quantize_int8,
    to_unsigned,
)
from .matmul_nbits import nbits_codes, nbits_dequantize, nbits_order
from .schemes import SCHEMES, Scheme, dequantize_stored

__all__ = ["GROUP_SIZES", "SCHEMES", "UNSIGNED_ZERO", "QuantMetrics", "QuantizedTensor", "Scheme", "dequantize",
           "dequantize_stored", "fake_quantize_activations", "from_unsigned", "nbits_codes", "nbits_dequantize",
           "nbits_order", "pack_int4", "quant_error", "quantize_activations", "quantize_int4", "quantize_int8",
           "to_unsigned", "unpack_int4"]
