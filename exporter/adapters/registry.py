"""The adapter registry: Hugging Face architecture name → the adapter class of its family."""

from __future__ import annotations

from collections.abc import Callable

from ..source import ExportError
from .adapter import Adapter
from .config import HFConfig

ADAPTERS: dict[str, type[Adapter]] = {}


def register(*architectures: str) -> Callable[[type[Adapter]], type[Adapter]]:
    """Class decorator: `@register("MixtralForCausalLM")` makes the class the adapter of that architecture."""

    def add(cls: type[Adapter]) -> type[Adapter]:
        for name in architectures:
            if name in ADAPTERS:
                raise ValueError(f"architecture {name} is registered twice")
            ADAPTERS[name] = cls
        return cls

    return add


def adapter_for(config: HFConfig) -> Adapter:
    """The adapter for `config`'s architecture; `ExportError` listing the supported ones otherwise."""
    name = config.architecture
    if name not in ADAPTERS:
        raise ExportError(f"{config.name}: architecture {name!r} is not supported; "
                          f"supported: {', '.join(sorted(ADAPTERS))}")
    return ADAPTERS[name](config)
