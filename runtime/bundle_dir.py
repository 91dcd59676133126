"""A bundle directory opened once: every file is opened relative to that one handle.

A concurrent `export --force` renames a new bundle into place; a load that holds the old
directory's handle keeps reading the old bundle whole, or finds its files gone and says so,
never a mix of the two. Files are opened without following symbolic links and must be
regular files; names are plain names inside the directory (checked by the manifest reader).
"""

from __future__ import annotations

import errno
import mmap
import os
import stat
from pathlib import Path

import xxhash

from .errors import BundleError

_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
_BLOCK = 8 << 20


class BundleDir:
    """An open bundle directory: read, hash and map its files by plain name."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECTORY)
        except FileNotFoundError:
            raise BundleError(f"{self.path}: no such bundle (the path does not exist)") from None
        except NotADirectoryError:
            raise BundleError(f"{self.path} is not a moedge bundle: a bundle is a directory") from None
        except OSError as exc:
            raise BundleError(f"{self.path}: cannot open the bundle directory: {exc.strerror}") from None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> BundleDir:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self, name: str) -> tuple[int, int]:
        """(file descriptor, size) of the regular file `name`; the caller closes the descriptor."""
        try:
            fd = os.open(name, _OPEN_FLAGS, dir_fd=self.fd)
        except FileNotFoundError:
            raise BundleError(f"{self.path}: bundle file {name} is missing (or the bundle was replaced "
                              "while loading: load it again)") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise BundleError(f"{self.path}: bundle file {name} is a symbolic link; bundle files must be "
                                  "regular files inside the bundle") from None
            raise BundleError(f"{self.path}: cannot open bundle file {name}: {exc.strerror}") from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise BundleError(f"{self.path}: bundle file {name} is not a regular file")
        return fd, info.st_size

    def exists(self, name: str) -> bool:
        """Whether anything (a file, a link, a folder) is called `name` in the bundle."""
        try:
            os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        except OSError:
            return True
        return True

    def size(self, name: str) -> int:
        fd, size = self.open(name)
        os.close(fd)
        return size

    def read(self, name: str, limit: int) -> bytes:
        """The whole file `name`, refused if larger than `limit` bytes."""
        fd, size = self.open(name)
        try:
            if size > limit:
                raise BundleError(f"{self.path}: {name} is {size} bytes, more than the {limit} allowed")
            data = os.read(fd, size + 1) if size else b""
            while len(data) < size and (chunk := os.read(fd, size + 1 - len(data))):
                data += chunk
        finally:
            os.close(fd)
        if len(data) != size:
            raise BundleError(f"{self.path}: {name} changed size while it was read")
        return data

    def digest(self, name: str) -> str:
        """The checksum (xxh3-128, hex) of the whole file `name`, read in blocks (nothing is mapped)."""
        fd, _ = self.open(name)
        hasher = xxhash.xxh3_128()
        buffer = bytearray(_BLOCK)
        view = memoryview(buffer)
        try:
            with os.fdopen(fd, "rb", buffering=0, closefd=True) as f:
                while n := f.readinto(buffer):
                    hasher.update(view[:n])
        except OSError as exc:
            raise BundleError(f"{self.path}: cannot read bundle file {name}: {exc.strerror}") from None
        return hasher.hexdigest()

    def map(self, name: str) -> mmap.mmap:
        """A read-only memory map of the whole file `name` (which must not be empty)."""
        fd, size = self.open(name)
        try:
            if size == 0:
                raise BundleError(f"{self.path}: bundle file {name} is empty")
            return mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)

    def graph_path(self, name: str) -> str:
        """A path to `name` that resolves through this directory handle (Linux /proc), for onnxruntime,
        which opens graphs and their external data by path."""
        pinned = f"/proc/self/fd/{self.fd}"
        return f"{pinned}/{name}" if os.path.isdir(pinned) else str(self.path / name)
