"""Weight quantization (numpy only): int8 values, their error metrics and packed layouts."""

from .int8 import GROUP_SIZES, QuantError, QuantizedTensor, dequantize, quant_error, quantize_int8

__all__ = ["GROUP_SIZES", "QuantError", "QuantizedTensor", "dequantize", "quant_error", "quantize_int8"]
