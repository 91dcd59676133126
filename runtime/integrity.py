"""Checksums of bundle contents (xxh3-128, ~30 GB/s): written by the exporter, checked before first use.

The manifest carries the checksum of its own canonical JSON; every other file carries one in the
manifest (`files`), except the experts file, whose spans carry one each, seeded with the expert's
(layer, index) slot so that a span moved to another slot does not verify. Dense files are verified
when a bundle is loaded, an expert when it is first routed to.
"""

from __future__ import annotations

import json
from typing import Any

import xxhash

CHECKSUM_FIELD = "checksum"


def digest(data, seed: int = 0) -> str:
    """xxh3-128 of a bytes-like object, as 32 hex digits."""
    return xxhash.xxh3_128_hexdigest(data, seed=seed)


def expert_seed(layer: int, expert: int) -> int:
    """The hash seed of an expert's span: its (layer, index) slot."""
    return (layer << 32) | expert


def canonical_json(data: Any) -> bytes:
    """One byte string per JSON value: sorted keys, no spaces, ASCII."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def manifest_checksum(data: dict[str, Any]) -> str:
    """The checksum of a manifest dict, over every field but the checksum itself."""
    return digest(canonical_json({k: v for k, v in data.items() if k != CHECKSUM_FIELD}))
