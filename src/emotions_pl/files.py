"""Atomic writes: a reader sees the old file or folder or the new one, never half of either.

The only module that writes to a temporary name and renames. Single files go through
``atomic_write`` (any writer) or its text/bytes forms; folders are built in ``staging_dir`` beside
their destination and swapped in by ``publish_dir``.
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


def sha256(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks: how exports, teachers and reports name a file."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
