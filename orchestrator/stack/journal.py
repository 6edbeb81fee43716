"""Swapping a stack's files for a restored set, so that a kill at any instant leaves the old set or the new one, whole.

The swap is a few renames inside the stack directory, written down first in
restore.journal (which names moved where). Until the journal is gone, every
command that opens the stack finishes the job: a swap that did not reach its
end is rolled back, one that did has its leftovers cleared. Ctrl-C during the
renames is held until they are done or undone, so that the temporary
directory's cleanup never deletes the only copy of a file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterator

from orchestrator.events import SILENT, Reporter
from orchestrator.files import fsync_dir, write_text

JOURNAL = "restore.journal"
STAGING_PREFIX = ".restore-"


def staging(directory: Path) -> Path:
    """A private directory inside the stack (same filesystem: the swap is renames) for a restore to unpack into."""
    directory.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=directory, prefix=STAGING_PREFIX))


def swap(directory: Path, stage: Path, names: tuple[str, ...], then: Callable[[], None] | None = None,
         reporter: Reporter = SILENT) -> None:
    """Put stage/incoming/NAME in place of directory/NAME for each name (one absent from incoming is removed); the old
    ones wait in stage/previous until `then()` (the part of the restore outside the directory) has returned."""
    incoming, previous = stage / "incoming", stage / "previous"
    previous.mkdir(mode=0o700, exist_ok=True)
    incoming.mkdir(mode=0o700, exist_ok=True)
    moving = [n for n in names if _exists(incoming / n) or _exists(directory / n)]
    had = [n for n in moving if _exists(directory / n)]
    record = {"staging": stage.name, "names": moving, "had": had, "state": "swapping"}
    with _held_interrupts():
        write_text(directory / JOURNAL, json.dumps(record) + "\n", mode=0o600)
        reporter.reached("restore journal")
        try:
            for name in moving:
                if name in had and not _exists(previous / name):
                    os.replace(directory / name, previous / name)
                    reporter.reached(f"restore aside {name}")
                if _exists(incoming / name):
                    os.replace(incoming / name, directory / name)
                    reporter.reached(f"restore in {name}")
            fsync_dir(directory)
            if then is not None:
                then()
                reporter.reached("restore outside")
        except BaseException:
            _roll_back(directory, stage, record)
            raise
        write_text(directory / JOURNAL, json.dumps(record | {"state": "done"}) + "\n", mode=0o600)
        reporter.reached("restore done")
    _finish(directory, stage)


def recover(directory: Path, reporter: Reporter = SILENT) -> None:
    """Finish a restore a kill interrupted, saying so in a note: roll back a swap that did not end, clear one that did;
    remove unpacked copies no journal names."""
    path = directory / JOURNAL
    if path.is_file():
        try:
            record = json.loads(path.read_text())
            stage = directory / record["staging"]
            if not record["staging"].startswith(STAGING_PREFIX) or "/" in record["staging"]:
                raise ValueError
        except (OSError, ValueError, KeyError, TypeError):
            reporter.note(f"{path} is unreadable: a restore was interrupted; look in {directory}/{STAGING_PREFIX}*/previous "
                          "for the files it moved aside", level="warning")
            return
        if record.get("state") == "done":
            reporter.note("finished clearing up after a restore that was interrupted at its end", level="warning")
        else:
            _roll_back(directory, stage, record)
            reporter.note("a restore was interrupted before it ended: it was rolled back, and the stack is as it was "
                          "before it", level="warning")
        _finish(directory, stage)
    for left in directory.glob(f"{STAGING_PREFIX}*"):  # unpacked and never swapped in: copies only
        shutil.rmtree(left, ignore_errors=True)


def _roll_back(directory: Path, stage: Path, record: dict) -> None:
    """Each name back as it was: an old one from previous/, a new one (with no old one) taken out again."""
    previous, incoming = stage / "previous", stage / "incoming"
    incoming.mkdir(exist_ok=True)
    for name in record["names"]:
        if name in record["had"]:
            if _exists(previous / name):  # moved aside: whatever stands in its place now is the new one
                if _exists(directory / name):
                    _remove(directory / name)
                os.replace(previous / name, directory / name)
        elif _exists(directory / name) and not _exists(incoming / name):
            os.replace(directory / name, incoming / name)  # new, with no old one: out again
    fsync_dir(directory)


def _finish(directory: Path, stage: Path) -> None:
    shutil.rmtree(stage, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(directory / JOURNAL)
    fsync_dir(directory)


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


@contextlib.contextmanager
def _held_interrupts() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block is done, then act as they would have (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    old = {s: signal.signal(s, lambda n, _f: caught.append(n)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        for n in caught[:1]:
            os.kill(os.getpid(), n)
