"""FORMAT.md documents every field a manifest holds (the contract is written down, not only coded)."""

import dataclasses
from pathlib import Path

from fuzz_bundles import read_manifest_json
from helpers import tiny_moe_spec
from moedge.runtime.spec import ModelSpec, RoutingSpec

FORMAT = (Path(__file__).resolve().parents[1] / "FORMAT.md").read_text()


def _keys(node, prefix=""):
    if isinstance(node, dict):
        for key, value in node.items():
            if prefix.endswith(("tensors.", "layers.", "checksums.", "files.", "schemes.")):
                continue  # names of tensors, layers and files: data, not fields
            yield key
            yield from _keys(value, f"{prefix}{key}.")


def test_every_spec_field_is_documented():
    for cls in (ModelSpec, RoutingSpec):
        for f in dataclasses.fields(cls):
            assert f"`{f.name}`" in FORMAT, f"FORMAT.md does not document {cls.__name__}.{f.name}"


def test_every_manifest_field_is_documented(exported):
    data = read_manifest_json(exported("format", tiny_moe_spec()).bundle)
    for key in set(_keys(data)) - {f.name for f in dataclasses.fields(ModelSpec)}:
        assert f"`{key}" in FORMAT or f"{key}`" in FORMAT, f"FORMAT.md does not document the manifest field {key}"
