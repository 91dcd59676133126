"""Full checksum verification of a bundle (reads every byte; not part of loading)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from .bundle import BundleError, Manifest


def verify_checksums(root: str | Path, manifest: Manifest) -> None:
    """Raise `BundleError` naming the first file whose sha256 differs from the manifest."""
    for name, info in manifest.files.items():
        digest = hashlib.sha256()
        with open(Path(root) / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != info.get("sha256"):
            raise BundleError(f"{name}: checksum mismatch, the file is corrupt")
