"""Weight quantization (numpy only): int8 values, their error metrics and packed layouts."""

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

__all__ = ["GROUP_SIZES", "UNSIGNED_ZERO", "QuantMetrics", "QuantizedTensor", "dequantize", "from_unsigned",
           "quant_error", "quantize_int8", "to_unsigned"]
