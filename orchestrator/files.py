"""Files that appear under their final name only when complete, their hashes, and where a path would land.

A file is written to a hidden partial name beside its final one, fsynced,
then renamed; on any failure the partial is removed. `ready` lets a caller
hold the rename until something else is proven (the sources' hashes, say).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import Callable, Iterator


def partial_name(final: Path) -> Path:
    return final.with_name(f".{final.name}.partial")


@contextlib.contextmanager
def atomic_path(final: Path, ready: Callable[[], None] | None = None) -> Iterator[Path]:
    """Yield a temporary path; on success (and once `ready()` returns) it is fsynced and renamed to `final`."""
    final = Path(final)
    tmp = partial_name(final)
    tmp.unlink(missing_ok=True)
    try:
        yield tmp
        if ready is not None:
            ready()
        fsync_file(tmp)
        os.replace(tmp, final)
        fsync_dir(final.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(final: Path, text: str, mode: int | None = None) -> None:
    """`text` under `final`, whole or not at all; with `mode`, the file has that mode from its creation on (a secret is
    never readable by others, not even between a create and a chmod)."""
    with atomic_path(final) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 if mode is None else mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            if mode is not None:
                os.fchmod(fd, mode)  # the umask may have narrowed it; never widened beyond `mode`
            f.write(text)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fsync_file(path)


def sha256_file(path: Path, progress: Callable[[int], None] | None = None, block: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(block), b""):
            h.update(chunk)
            if progress:
                progress(len(chunk))
    return h.hexdigest()


def nearest_existing(path: Path) -> Path:
    """The path itself or its closest ancestor that exists: where writability and free space are decided."""
    probe = Path(path)
    while not probe.exists():
        probe = probe.parent
    return probe
