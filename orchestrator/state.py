"""Atomic files and the build's record of finished stages, which makes every stage resumable.

A file appears under its final name only when complete: it is written to a
hidden partial name beside it, fsynced, then renamed. A stage counts as done
only when its record, keyed by a fingerprint of its inputs, is in the state
file and its outputs exist with the recorded hashes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Iterator


def partial_name(final: Path) -> Path:
    return final.with_name(f".{final.name}.partial")


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path; on success it is fsynced and renamed to `final`, on failure removed."""
    final = Path(final)
    tmp = partial_name(final)
    tmp.unlink(missing_ok=True)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, final)
        fsync_dir(final.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(final: Path, text: str, mode: int | None = None) -> None:
    with atomic_path(final) as tmp:
        tmp.write_text(text, encoding="utf-8")
        if mode is not None:
            os.chmod(tmp, mode)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fsync_file(path)


def sha256_file(path: Path, progress=None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(8 << 20), b""):
            h.update(block)
            if progress:
                progress(len(block))
    return h.hexdigest()


def fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class BuildState:
    """Finished stages of one build directory, kept in .orch/state.json."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.stages: dict[str, dict] = {}
        self._lock = threading.Lock()  # stages may finish on two threads (hashing runs beside conversion)
        if self.path.is_file():
            self.stages = json.loads(self.path.read_text()).get("stages", {})

    def done(self, key: str, fp: str) -> dict | None:
        record = self.stages.get(key)
        if not record or record.get("fingerprint") != fp:
            return None
        return record

    def record(self, key: str, fp: str, result: dict, seconds: float) -> dict:
        with self._lock:
            self.stages[key] = {"fingerprint": fp, "result": result, "seconds": round(seconds, 3)}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_text(self.path, json.dumps({"stages": self.stages}, indent=2))
            return self.stages[key]

    def forget(self, key: str) -> None:
        self.stages.pop(key, None)
