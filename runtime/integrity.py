"""Checksums of bundle files: written by the exporter, verified on demand (reads every byte;
not part of loading)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from .bundle import BundleError, Manifest


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_checksums(root: str | Path, manifest: Manifest) -> None:
    """Raise `BundleError` naming the first file whose sha256 differs from the manifest."""
    for name, info in manifest.files.items():
        if file_sha256(Path(root) / name) != info.get("sha256"):
            raise BundleError(f"{name}: checksum mismatch, the file is corrupt")
