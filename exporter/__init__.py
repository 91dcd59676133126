"""Export trained models (our own checkpoints, Hugging Face folders) to moedge bundles. Needs torch."""

from .export import export
from .source import ExportError

__all__ = ["ExportError", "export"]
