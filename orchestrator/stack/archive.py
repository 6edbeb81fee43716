"""Reading a tar archive nobody vouches for yet: its members listed and judged before a byte is written.

tarfile's own `filter="data"` had a published bypass (CVE-2025-4517: symlinks
whose resolved path passes PATH_MAX, then a hard link) on every Python before
3.11.13, 3.12.11 and 3.13.4, and orch supports older ones. So orch never lets
tarfile extract: it accepts only regular files and directories with plain
relative names (all an orch backup holds), caps their total size, and writes
each file itself into a private directory it made, with O_EXCL and
O_NOFOLLOW, at a mode no wider than 0600 (directories 0700).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from orchestrator.errors import BadInput
from orchestrator.files import nearest_existing

MAX_MEMBERS = 200_000
MAX_NAME = 1024
SMALL = 4 << 20  # a member read into memory (a manifest, a signature) may be at most this big
FREE_MARGIN = 256 << 20  # left free on the disk after unpacking


@dataclass(frozen=True)
class Member:
    name: str  # normalised: no trailing slash, no ./
    size: int
    mode: int
    is_dir: bool


class Listing:
    """An opened archive whose every member has been judged safe; files are read or written one at a time."""

    def __init__(self, path: Path, tar: tarfile.TarFile, members: dict[str, tuple[Member, tarfile.TarInfo]]):
        self.path, self._tar, self._members = path, tar, members

    @property
    def files(self) -> dict[str, Member]:
        return {name: m for name, (m, _) in self._members.items() if not m.is_dir}

    def read_small(self, name: str) -> bytes | None:
        """A small member's bytes (None when absent); a large one is refused rather than read into memory."""
        if name not in self.files:
            return None
        member, info = self._members[name]
        if member.size > SMALL:
            raise BadInput(f"{self.path}: {name} is {member.size} bytes, more than any orch backup holds; use another backup")
        with self._tar.extractfile(info) as f:
            return f.read()

    def extract(self, name: str, into: Path) -> str:
        """Write file `name` under `into` (made by the caller, private), mode at most 0600; its sha256."""
        member, info = self._members[name]
        *folders, leaf = PurePosixPath(name).parts
        target = into
        for part in folders:  # only directories this extraction made are below `into`: no link to follow
            target = target / part
            target.mkdir(mode=0o700, exist_ok=True)
        target = target / leaf
        digest = hashlib.sha256()
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out, self._tar.extractfile(info) as f:
            os.fchmod(fd, (member.mode & 0o600) or 0o600)
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
        return digest.hexdigest()

    def close(self) -> None:
        self._tar.close()

    def __enter__(self) -> "Listing":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def safe_name(raw: str) -> str | None:
    """The member's name as a plain relative path, or None when it is not one (absolute, .., empty parts, odd bytes)."""
    if not raw or len(raw) > MAX_NAME or "\0" in raw or "\\" in raw or raw.startswith("/"):
        return None
    parts = [p for p in raw.rstrip("/").split("/") if p != "."]
    if not parts or any(p in ("", "..") or len(p) > 255 for p in parts):
        return None
    return "/".join(parts)


def open_checked(path: Path, into: Path, *, limit: int) -> Listing:
    """Open `path` (a gzip'd tar) and judge every member before anything is written: only regular files and
    directories with safe, distinct names, their sizes adding up to no more than `limit` and than `into`'s disk
    holds. Any other archive is a BadInput of one line."""
    if path.is_dir():
        raise BadInput(f"{path} is a directory: pass one backup file in it, such as the newest of the stack's backups/ "
                       "(orch backup writes them there)")
    if not path.is_file():
        raise BadInput(f"{path} does not exist: pass a file orch backup wrote")
    with open(path, "rb") as f:
        if f.read(2) != b"\x1f\x8b":  # every orch backup is gzip'd: anything else was never one, rather than cut
            raise BadInput(f"{path} is not an orch backup (not a gzip'd tar): pass a file orch backup wrote")
    try:
        tar = tarfile.open(path, mode="r:gz")
    except (tarfile.TarError, EOFError, OSError) as e:
        raise _cut(path, e) from None
    try:
        members: dict[str, tuple[Member, tarfile.TarInfo]] = {}
        total = 0
        while (info := tar.next()) is not None:
            if len(members) >= MAX_MEMBERS:
                raise BadInput(f"{path} holds more than {MAX_MEMBERS} members, more than any orch backup: use another backup")
            kind = "file" if info.isreg() else "directory" if info.isdir() else _kind(info)
            name = safe_name(info.name)
            if kind not in ("file", "directory"):
                raise BadInput(f"{path} holds a {kind} ({info.name[:80]!r}); an orch backup holds only files and directories: "
                               "it was not written by orch, so nothing was restored")
            if name is None:
                raise BadInput(f"{path} holds a member named {info.name[:80]!r}, which is not a plain relative path: "
                               "it was not written by orch, so nothing was restored")
            if name in members:
                raise BadInput(f"{path} holds {name} twice: it was not written by orch, so nothing was restored")
            members[name] = (Member(name, info.size if info.isreg() else 0, info.mode, info.isdir()), info)
            total += info.size if info.isreg() else 0
        for name in members:  # a file cannot also be a directory on the way to another member
            for parent in list(PurePosixPath(name).parents)[:-1]:
                if str(parent) in members and not members[str(parent)][0].is_dir:
                    raise BadInput(f"{path} holds {parent} as a file and as a directory: it was not written by orch")
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        tar.close()
        raise _cut(path, e) from None
    except BaseException:
        tar.close()
        raise
    free = shutil.disk_usage(nearest_existing(into)).free - FREE_MARGIN
    if total > limit or total > free:
        tar.close()
        raise BadInput(f"{path} would unpack to {total / 1e9:.2f} GB, more than " +
                       (f"the {limit / 1e9:.2f} GB a backup may hold: use another backup" if total > limit
                        else f"the {max(free, 0) / 1e9:.2f} GB free beside {into}: free some space first"))
    return Listing(path, tar, members)


def _kind(info: tarfile.TarInfo) -> str:
    return ("symbolic link" if info.issym() else "hard link" if info.islnk() else "FIFO" if info.isfifo()
            else "device" if info.isdev() else "special member")


def _cut(path: Path, e: BaseException) -> BadInput:
    return BadInput(f"{path} is not a complete orch backup ({str(e)[:100] or type(e).__name__}): it may have been cut short; "
                    "use another backup")
