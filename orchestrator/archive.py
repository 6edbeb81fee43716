"""Reading a tar archive nobody vouches for yet (a backup, a bundle): its members listed and judged before a byte is written.

tarfile's own `filter="data"` had a published bypass (CVE-2025-4517: symlinks
whose resolved path passes PATH_MAX, then a hard link) on every Python before
3.11.13, 3.12.11 and 3.13.4, and orch supports older ones. So orch never lets
tarfile extract: it accepts only regular files and directories with plain
relative names (all orch writes), caps their total size, and writes each
file itself into a private directory it made, with O_EXCL and O_NOFOLLOW, at
a mode no wider than its kind allows (0600 for a backup, 0755 for a bundle's
programs; directories 0700).
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
class Kind:
    """What kind of orch archive is read, for its one-line refusals and its modes."""

    noun: str  # "orch backup"
    writer: str  # the command that writes one
    retry: str  # what to do with a bad one
    unchanged: str  # what a refusal leaves as it was
    gzip: bool
    widest: int  # the widest mode a file is written with
    directory_hint: str  # for a directory passed where one archive was wanted


BACKUP = Kind("orch backup", "orch backup", "use another backup", "nothing was restored", True, 0o600,
              "pass one backup file in it, such as the newest of the stack's backups/ (orch backup writes them there)")
BUNDLE = Kind("orch bundle", "orch bundle create", "make it again with orch bundle create, or copy it again", "nothing was installed",
              False, 0o755, "pass the one file orch bundle create wrote")


@dataclass(frozen=True)
class Member:
    name: str  # normalised: no trailing slash, no ./
    size: int
    mode: int
    is_dir: bool


class Listing:
    """An opened archive whose every member has been judged safe; files are read or written one at a time."""

    def __init__(self, path: Path, tar: tarfile.TarFile, members: dict[str, tuple[Member, tarfile.TarInfo]], kind: Kind = BACKUP):
        self.path, self._tar, self._members, self.kind = path, tar, members, kind

    @property
    def files(self) -> dict[str, Member]:
        return {name: m for name, (m, _) in self._members.items() if not m.is_dir}

    def read_small(self, name: str) -> bytes | None:
        """A small member's bytes (None when absent); a large one is refused rather than read into memory."""
        if name not in self.files:
            return None
        member, info = self._members[name]
        if member.size > SMALL:
            raise BadInput(f"{self.path}: {name} is {member.size} bytes, more than any {self.kind.noun} holds; {self.kind.retry}")
        try:
            with self._tar.extractfile(info) as f:
                return f.read()
        except (tarfile.TarError, EOFError, OSError) as e:
            raise _cut(self.path, e, self.kind) from None

    def extract(self, name: str, into: Path, progress=None) -> str:
        """Write file `name` under `into` (made by the caller, private), at a mode no wider than the kind's; its sha256.
        `progress(n)` is told of every chunk written."""
        member, info = self._members[name]
        *folders, leaf = PurePosixPath(name).parts
        target = into
        for part in folders:  # only directories this extraction made are below `into`: no link to follow
            target = target / part
            target.mkdir(mode=0o700, exist_ok=True)
        target = target / leaf
        digest = hashlib.sha256()
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "wb") as out, self._tar.extractfile(info) as f:
                os.fchmod(fd, (member.mode & self.kind.widest) or 0o600)
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
                    out.write(chunk)
                    if progress:
                        progress(len(chunk))
        except (tarfile.TarError, EOFError) as e:
            raise _cut(self.path, e, self.kind) from None
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


def open_checked(path: Path, into: Path, *, limit: int, kind: Kind = BACKUP) -> Listing:
    """Open `path` (a tar, gzip'd for a backup) and judge every member before anything is written: only regular files
    and directories with safe, distinct names, their sizes adding up to no more than `limit` and than `into`'s disk
    holds. Any other archive is a BadInput of one line."""
    k = kind
    if path.is_dir():
        raise BadInput(f"{path} is a directory: {k.directory_hint}")
    if not path.is_file():
        raise BadInput(f"{path} does not exist: pass a file {k.writer} wrote")
    if k.gzip:
        with open(path, "rb") as f:
            if f.read(2) != b"\x1f\x8b":  # every orch backup is gzip'd: anything else was never one, rather than cut
                raise BadInput(f"{path} is not an {k.noun} (not a gzip'd tar): pass a file {k.writer} wrote")
    elif not _is_tar(path):
        raise BadInput(f"{path} is not an {k.noun} (not a tar archive): pass a file {k.writer} wrote")
    try:
        tar = tarfile.open(path, mode="r:gz" if k.gzip else "r:")
    except (tarfile.TarError, EOFError, OSError) as e:
        raise _cut(path, e, k) from None
    try:
        members: dict[str, tuple[Member, tarfile.TarInfo]] = {}
        total = 0
        while (info := tar.next()) is not None:
            if len(members) >= MAX_MEMBERS:
                raise BadInput(f"{path} holds more than {MAX_MEMBERS} members, more than any {k.noun}: {k.retry}")
            kind_of = "file" if info.isreg() else "directory" if info.isdir() else _kind(info)
            name = safe_name(info.name)
            if kind_of not in ("file", "directory"):
                raise BadInput(f"{path} holds a {kind_of} ({info.name[:80]!r}); an {k.noun} holds only files and directories: "
                               f"it was not written by orch, so {k.unchanged}")
            if name is None:
                raise BadInput(f"{path} holds a member named {info.name[:80]!r}, which is not a plain relative path: "
                               f"it was not written by orch, so {k.unchanged}")
            if name in members:
                raise BadInput(f"{path} holds {name} twice: it was not written by orch, so {k.unchanged}")
            members[name] = (Member(name, info.size if info.isreg() else 0, info.mode, info.isdir()), info)
            total += info.size if info.isreg() else 0
        for name in members:  # a file cannot also be a directory on the way to another member
            for parent in list(PurePosixPath(name).parents)[:-1]:
                if str(parent) in members and not members[str(parent)][0].is_dir:
                    raise BadInput(f"{path} holds {parent} as a file and as a directory: it was not written by orch")
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        tar.close()
        raise _cut(path, e, k) from None
    except BaseException:
        tar.close()
        raise
    free = shutil.disk_usage(nearest_existing(into)).free - FREE_MARGIN
    if total > limit or total > free:
        tar.close()
        raise BadInput(f"{path} would unpack to {total / 1e9:.2f} GB, more than " +
                       (f"the {limit / 1e9:.2f} GB a {k.noun.split()[-1]} may hold: {k.retry}" if total > limit
                        else f"the {max(free, 0) / 1e9:.2f} GB free beside {into}: free some space first"))
    return Listing(path, tar, members, k)


def _is_tar(path: Path) -> bool:
    """A tar's first header carries "ustar" at byte 257 (POSIX and GNU formats, all orch writes)."""
    with open(path, "rb") as f:
        return f.read(512)[257:262] == b"ustar"


def _kind(info: tarfile.TarInfo) -> str:
    return ("symbolic link" if info.issym() else "hard link" if info.islnk() else "FIFO" if info.isfifo()
            else "device" if info.isdev() else "special member")


def _cut(path: Path, e: BaseException, kind: Kind = BACKUP) -> BadInput:
    return BadInput(f"{path} is not a complete {kind.noun} ({str(e)[:100] or type(e).__name__}): it may have been cut short; "
                    f"{kind.retry}")
