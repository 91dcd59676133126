"""Hugging Face checkpoints: one adapter per family, registered by architecture name.

Importing the family modules registers them; `read_hf_checkpoint` opens a folder as a `Source`.
"""

from . import dense, moe  # noqa: F401  (registers the families)
from .hf_source import read_hf_checkpoint
from .registry import ADAPTERS, register

__all__ = ["ADAPTERS", "read_hf_checkpoint", "register"]
