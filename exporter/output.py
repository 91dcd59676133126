"""Where an export lands: checked before any work, written beside it, renamed into place.

`--force` replaces a moedge bundle and nothing else. A failed or interrupted export removes its
temporary folder; one that was killed leaves it, and the next export to the same path removes it.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..runtime.bundle import FORMAT_NAME, MANIFEST
from ..runtime.bundle_dir import BundleDir
from ..runtime.errors import BundleError
from .source import ExportError


def write_atomically(out: Path, force: bool, write: Callable[[Path], object]) -> object:
    """Run `write(folder)` on a fresh temporary folder beside `out`, then put that folder at `out`
    (replacing the bundle there with `force`); return what `write` returned."""
    out = check_output(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(out)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_partial_prefix(out)}{os.getpid()}-", dir=out.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; a bundle is an ordinary folder
        result = write(tmp)
        _flush_tree(tmp)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f"{_partial_prefix(out)}{os.getpid()}-old-", dir=out.parent))
            os.replace(out, old / "bundle")
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


def check_output(out: str | Path, force: bool) -> Path:
    """The absolute bundle path `out`, if an export may write it: absent, or (with `force`) a moedge bundle."""
    out = Path(out).absolute()
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ExportError(f"{out} exists and is not a bundle folder; refusing to replace it")
    if out.exists():
        if not force:
            raise ExportError(f"{out} already exists (pass --force to replace it)")
        if not _is_bundle(out):
            raise ExportError(f"{out} is not a moedge bundle (no moedge manifest.json); --force replaces only "
                              "bundles, so it is left alone")
    existing = next(p for p in out.parents if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ExportError(f"cannot write {out}: {existing} is not a writable folder")
    return out


def _is_bundle(path: Path) -> bool:
    """A folder whose manifest says it is a moedge bundle (of any version: old ones may be replaced)."""
    try:
        with BundleDir(path) as bundle:
            data = json.loads(bundle.read(MANIFEST, 1 << 26))
    except (BundleError, ValueError, RecursionError):
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT_NAME


def _partial_prefix(out: Path) -> str:
    return f".{out.name}.partial-"


def remove_stale_partials(out: Path) -> None:
    """Remove temporary folders that earlier exports to `out` left behind (killed before cleaning up):
    those named after a process that no longer runs."""
    prefix = _partial_prefix(out)
    for path in out.parent.glob(f"{glob.escape(prefix)}*"):
        pid = path.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)) and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _flush_tree(root: Path) -> None:
    """Each file on disk, then out of the page cache. A write leaves base-size (4 KiB) folios there, and a map
    keeps whatever the cache holds, so the runtime would stream the weights through 4 KiB mappings; read back
    through its maps on 2 MiB pages (`runtime/huge_pages.py`) they come in 2 MiB folios, one TLB entry each
    (granite-1b-shape decoded 3.5% faster so, session 10). The first run after an export reads from disk."""
    for path in root.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())
            if hasattr(os, "posix_fadvise"):  # Linux; elsewhere the pages stay
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
