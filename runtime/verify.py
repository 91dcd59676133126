"""Checking a bundle's bytes against its manifest's checksums: what a load reads, and everything.

`verified_load_files` is what `Model.load` runs (every file but the experts, whose spans are
checked on first use by the `ExpertStore`); `verify_bundle` (`moedge inspect --verify`) adds
every expert span and the optional full graph, so it checks exactly what a run may ever read.
"""

from __future__ import annotations

from pathlib import Path

from .bundle import EXPERTS_HEADER, Manifest, check_experts_header, read_manifest
from .bundle_dir import BundleDir
from .errors import BundleError
from .integrity import digest, expert_seed

TOKENIZER_LIMIT = 256 << 20


def _mismatch(name: str) -> BundleError:
    return BundleError(f"{name}: checksum mismatch, the file is corrupt (export or copy the bundle again)")


def read_tokenizer(bundle: BundleDir, manifest: Manifest) -> bytes | None:
    """The bundle's tokenizer.json bytes, or None if it has none."""
    return None if manifest.tokenizer is None else bundle.read(manifest.tokenizer, TOKENIZER_LIMIT)


def verified_load_files(bundle: BundleDir, manifest: Manifest) -> bytes | None:
    """Check the checksum of every file a load reads (layer graphs, dense weights, tokenizer) and return
    the tokenizer's bytes, hashed as read, so that what was verified is what is used."""
    for name in (*manifest.layer_graphs, manifest.dense_file):
        if bundle.digest(name) != manifest.files[name]["xxh3"]:
            raise _mismatch(name)
    tokenizer = read_tokenizer(bundle, manifest)
    if tokenizer is not None and digest(tokenizer) != manifest.files[manifest.tokenizer]["xxh3"]:
        raise _mismatch(manifest.tokenizer)
    return tokenizer


def check_expert(data, layer: int, expert: int, checksum: str, name: str) -> None:
    """Raise `BundleError` unless `data` (the span's bytes) has the `checksum` of expert `expert` of `layer`."""
    if digest(data, seed=expert_seed(layer, expert)) != checksum:
        raise BundleError(f"{name}: expert {expert} of layer {layer} fails its checksum: the file is corrupt "
                          "(export or copy the bundle again)")


def verify_bundle(path: str | Path) -> list[str]:
    """Check every checksum of the bundle at `path`; return one line per part checked."""
    with BundleDir(path) as bundle:
        manifest = read_manifest(bundle)
        verified_load_files(bundle, manifest)
        lines = [f"manifest, {len(manifest.layer_graphs)} layer graphs, {manifest.dense_file}"
                 + (f", {manifest.tokenizer}" if manifest.tokenizer else "") + ": ok"]
        if manifest.full_graph:
            if bundle.digest(manifest.full_graph) != manifest.files[manifest.full_graph]["xxh3"]:
                raise _mismatch(manifest.full_graph)
            lines.append(f"{manifest.full_graph} (benchmark peer; the runtime does not read it): ok")
        index = manifest.experts
        if index is not None:
            with bundle.map(index.file) as experts:
                check_experts_header(experts[:EXPERTS_HEADER.size], bundle.path / index.file)
                for layer, offsets in index.layers.items():
                    for e, offset in enumerate(offsets):
                        span = experts[offset:offset + index.span_bytes(layer, e)]
                        check_expert(span, layer, e, index.checksums[layer][e], index.file)
            lines.append(f"{index.file}: {sum(map(len, index.layers.values()))} expert spans ok")
    return lines


