"""Atomic writes, and the digests that name files and cache entries.

A reader sees the old file or folder or the new one, never half of either: the only module that
writes to a temporary name and renames. Single files go through ``atomic_write`` (any writer) or its
text/bytes forms; folders are built in ``staging_dir`` beside their destination and swapped in by
``publish_dir``. ``sha256`` is the one hash of files' bytes, ``fingerprint`` the one short name of a
cache entry from what it depends on.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` for a temporary file beside ``path``, then rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        tmp.chmod(0o666 & ~_umask())  # mkstemp makes it private; the file is an ordinary one
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def staging_dir(output: Path) -> Path:
    """An empty folder beside ``output`` (same file system, so ``publish_dir`` can rename it)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.tmp-"))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the published folder is an ordinary one
    return tmp


def publish_dir(
    tmp: Path, output: Path, replace: bool = True, stop_requested: threading.Event | None = None
) -> bool:
    """Swap the finished folder ``tmp`` into place at ``output``; return whether it was published.

    An existing ``output`` is removed only after the new one is there; with ``replace=False`` it is
    kept (a cache entry another process finished first) and ``tmp`` is dropped. Ctrl+C / SIGTERM are
    held back during the renames, so they cannot leave ``output`` missing; ``stop_requested`` is a
    stop asked for earlier whose KeyboardInterrupt was swallowed (raised inside a ``__del__``).
    """
    for path in tmp.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~_umask())
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    old = None
    try:
        if stop_requested is not None and stop_requested.is_set():
            raise KeyboardInterrupt("stop requested before publishing")
        if output.exists():
            if not replace:
                shutil.rmtree(tmp, ignore_errors=True)
                return False
            old = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.old-"))
            os.rename(output, old / output.name)
        try:
            os.rename(tmp, output)
        except OSError:
            if old is not None:
                os.rename(old / output.name, output)
            elif not replace and output.exists():  # lost the race to another process
                shutil.rmtree(tmp, ignore_errors=True)
                return False
            raise
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return True


def sha256(*paths: Path, names: bool = False) -> str:
    """The hex sha256 of a file, or of several files' bytes one after another, read in 1 MiB blocks:
    how exports, teachers and reports name a file, and what the data caches trust.

    ``names`` hashes each file's name before its bytes, for a split's files: the suffix picks the
    reader, so the same bytes under another name can be other rows.
    """
    digest = hashlib.sha256()
    for path in paths:
        if names:
            digest.update(path.name.encode())
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def fingerprint(*parts: Any, length: int = 20) -> str:
    """A cache entry's name, ``length`` hex digits of the sha256 of what it depends on: a ``bytes``
    part as it is (a digest, a JSON text), any other by its ``repr``. Changing how the parts are
    hashed renames every cache entry written so far."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else repr(part).encode())
    return digest.hexdigest()[:length]
