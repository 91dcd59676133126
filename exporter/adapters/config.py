"""A Hugging Face `config.json`, read as plain data: typed look-ups that fail with a clear `ExportError`.

transformers is not needed to read it. Both config generations are understood: transformers 5
(`rope_parameters`) and 4 (`rope_theta` + `rope_scaling` at the top level).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..source import ExportError

_MISSING = object()


class HFConfig:
    """The parsed `config.json` of one checkpoint."""

    def __init__(self, data: dict[str, Any], name: str = "config.json"):
        self.data = data
        self.name = name

    @classmethod
    def load(cls, folder: Path) -> HFConfig:
        path = folder / "config.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ExportError(f"{path}: cannot read the config: {exc}") from None
        if not isinstance(data, dict):
            raise ExportError(f"{path}: expected a JSON object")
        return cls(data, str(path))

    @property
    def architecture(self) -> str:
        archs = self.data.get("architectures") or []
        if len(archs) != 1 or not isinstance(archs[0], str):
            raise ExportError(f"{self.name}: 'architectures' must name exactly one architecture, got {archs!r}")
        return archs[0]

    def get(self, key: str, default: Any = None) -> Any:
        """The value of `key`, or `default` when it is absent or null."""
        value = self.data.get(key)
        return default if value is None else value

    def require(self, *keys: str) -> Any:
        """The value of the first of `keys` that is set; `ExportError` if none is."""
        for key in keys:
            if self.data.get(key) is not None:
                return self.data[key]
        raise ExportError(f"{self.name}: '{keys[0]}' is missing")

    def expect(self, key: str, supported: Any, default: Any = _MISSING) -> None:
        """Refuse a config whose `key` is set to anything but `supported` (absent or null counts as `default`)."""
        value = self.data.get(key)
        if value is None:
            value = supported if default is _MISSING else default
        if value != supported:
            raise ExportError(f"{self.name}: {key}={value!r} is not supported (only {supported!r})")

    def rope_theta(self, default: float) -> float:
        """The RoPE base; refuses any RoPE variant but the plain one (scaling, partial rotary, per-layer)."""
        params = self.get("rope_parameters", {})
        legacy = self.get("rope_scaling", {})
        if params and "rope_type" not in params and "rope_theta" not in params:
            raise ExportError(f"{self.name}: per-layer rope_parameters are not supported")
        kind = params.get("rope_type") or legacy.get("rope_type") or legacy.get("type") or "default"
        if kind != "default":
            raise ExportError(f"{self.name}: RoPE type {kind!r} is not supported (only 'default', no rope scaling)")
        for source in (params, self.data):
            if source.get("partial_rotary_factor", 1.0) != 1.0:
                raise ExportError(f"{self.name}: partial rotary embeddings are not supported")
        return float(params.get("rope_theta") or self.get("rope_theta", default))

    def context_length(self) -> int:
        """`max_position_embeddings`, capped to an active sliding window.

        Within the window, sliding-window attention equals full attention, so the bundle is exact
        for every context it accepts; the runtime refuses longer ones.
        """
        length = int(self.require("max_position_embeddings"))
        window = self.get("sliding_window") if self.get("use_sliding_window", True) else None
        return min(length, int(window)) if window else length
