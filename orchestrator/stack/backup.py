"""Backups of a native stack: Open WebUI's data (chats, users, keys, uploads), the stack's settings and secrets, and the
list of Ollama's models, in one archive that is checked whole before anything is restored.

The database is copied with SQLite's online backup API, so a backup taken while
Open WebUI writes is consistent (a file copy of webui.db and its WAL may not be).
The archive is a gzip'd tar, mode 0600 (it holds the secret key and the admin
password), with manifest.json naming every file's sha256 and the stack it came
from (a hash of the stack's secret key, not the key). Restore refuses a cut,
altered or foreign archive in one line and touches nothing; it swaps the data in
only once the whole archive has been read and checked.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sqlite3
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import BadInput, OrchError
from orchestrator.files import atomic_path, sha256_file
from orchestrator.stack.config import read_env

FORMAT = "orch-backup/1"
DATA = "open-webui-data"  # Open WebUI's DATA_DIR inside the stack directory
DATABASE = "webui.db"
SETTINGS = (".env", "settings.json", "open-webui.json")  # the stack's own files a restore puts back
KEEP = 5  # backups orch up keeps in the stack's backups/


@dataclass(frozen=True)
class Manifest:
    stack: str
    created: str
    open_webui: str
    files: dict  # archive path -> sha256
    models: list  # [{"name", "digest"}] as Ollama listed them (the GGUFs are in the build directories)
    reason: str = "orch backup"

    def as_json(self) -> str:
        return json.dumps({"format": FORMAT, **self.__dict__}, indent=2, ensure_ascii=False) + "\n"


def stack_id(directory: Path) -> str | None:
    """Which stack this is: a hash of its Open WebUI secret key (None before the first orch up)."""
    key = read_env(directory / ".env").get("WEBUI_SECRET_KEY")
    return hashlib.sha256(f"orch-stack:{key}".encode()).hexdigest()[:16] if key else None


def default_path(directory: Path, reason: str = "manual") -> Path:
    return directory / "backups" / f"orch-backup-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{reason}.tar.gz"


def create(directory: Path, out: Path | None = None, *, models: list[dict] | None = None, open_webui: str = "",
           reason: str = "orch backup") -> Path:
    """Write the stack's backup to `out` (in the stack's backups/ by default); the archive appears only when complete."""
    ident = stack_id(directory)
    if ident is None:
        raise OrchError(f"{directory} holds no stack to back up (no .env): run orch up first, or pass --dir")
    out = out or default_path(directory, "manual" if reason == "orch backup" else "before-upgrade")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".backup-") as tmp:
        staged = Path(tmp)
        files = _stage(directory, staged)
        manifest = Manifest(ident, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), open_webui,
                            {name: sha256_file(staged / name) for name in files}, models or [], reason)
        with atomic_path(out) as part:
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
                data = manifest.as_json().encode()
                info = tarfile.TarInfo("manifest.json")
                info.size, info.mode, info.mtime = len(data), 0o600, int(time.time())
                tar.addfile(info, io.BytesIO(data))
                for name in files:
                    tar.add(staged / name, arcname=name, recursive=False)
    return out


def _stage(directory: Path, staged: Path) -> list[str]:
    """The files to archive, copied into `staged`: the database through SQLite's backup API, the rest as they are."""
    names = []
    for name in SETTINGS:
        if (directory / name).is_file():
            shutil.copy2(directory / name, staged / name)
            names.append(name)
    data = directory / DATA
    if (data / DATABASE).is_file():
        (staged / DATA).mkdir()
        source = sqlite3.connect(f"file:{data / DATABASE}?mode=ro", uri=True, timeout=30)
        target = sqlite3.connect(staged / DATA / DATABASE)
        try:
            with target:
                source.backup(target)
        finally:
            source.close()
            target.close()
        names.append(f"{DATA}/{DATABASE}")
    for path in sorted(data.rglob("*")) if data.is_dir() else []:
        rel = path.relative_to(directory).as_posix()
        if path.is_symlink() or not path.is_file() or path.name.startswith(DATABASE):  # webui.db, -wal, -shm: the copy above
            continue
        (staged / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, staged / rel)
        names.append(rel)
    return names


def read(archive: Path, into: Path, directory: Path | None = None) -> Manifest:
    """Unpack `archive` into `into` and check it whole: every file listed with its sha256, nothing else, from this stack.

    A cut, altered or foreign archive is a BadInput naming what is wrong.
    """
    if not archive.is_file():
        raise BadInput(f"{archive} does not exist: pass a file orch backup wrote")
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            tar.extractall(into, filter="data")  # no absolute paths, no .., no links out, no devices
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        raise BadInput(f"{archive} is not a complete orch backup ({str(e)[:100] or type(e).__name__}): "
                       "it may have been cut short; use another backup") from None
    try:
        raw = json.loads((into / "manifest.json").read_text())
        if raw.pop("format") != FORMAT:
            raise ValueError
        manifest = Manifest(**raw)
    except (OSError, ValueError, TypeError, KeyError):
        raise BadInput(f"{archive} has no readable orch backup manifest: it is not a backup orch wrote") from None
    present = {p.relative_to(into).as_posix() for p in into.rglob("*") if p.is_file()} - {"manifest.json"}
    if present != set(manifest.files):
        extra = sorted(present ^ set(manifest.files))[:3]
        raise BadInput(f"{archive} does not hold what its manifest lists ({', '.join(extra)}): it was altered; use another backup")
    for name, digest in manifest.files.items():
        if sha256_file(into / name) != digest:
            raise BadInput(f"{archive}: {name} does not match its sha256 in the manifest: it was altered; use another backup")
    current = stack_id(directory) if directory is not None else None
    if current is not None and manifest.stack != current:
        raise BadInput(f"{archive} is a backup of another stack (id {manifest.stack}, this one is {current}): "
                       "restore it into its own stack directory, or into a new one with --dir")
    return manifest


def restore(archive: Path, directory: Path) -> Manifest:
    """Put a checked backup in place of the stack's data and settings; the stack must be stopped."""
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory, prefix=".restore-") as tmp:
        unpacked = Path(tmp) / "backup"
        manifest = read(archive, unpacked, directory)
        put_back(unpacked, directory, Path(tmp) / "previous")
    return manifest


def put_back(unpacked: Path, directory: Path, previous: Path) -> None:
    """Swap the unpacked data and settings in by renames (the old ones wait in `previous` until all are in place)."""
    previous.mkdir()
    moved = []
    try:
        for name in (DATA, *SETTINGS):
            if (directory / name).exists():
                os.replace(directory / name, previous / name)
                moved.append(name)
            if (unpacked / name).exists():
                os.replace(unpacked / name, directory / name)
    except OSError as e:
        for name in moved:  # put back what was there
            if (directory / name).is_dir():
                shutil.rmtree(directory / name)
            os.replace(previous / name, directory / name)
        raise OrchError(f"could not restore into {directory}: {e}; the stack's data is as it was") from None


def prune(directory: Path, keep: int = KEEP) -> list[Path]:
    """Delete all but the newest `keep` backups orch up took before upgrades; the ones deleted."""
    taken = sorted((directory / "backups").glob("orch-backup-*-before-upgrade.tar.gz"))
    gone = taken[:-keep] if keep > 0 else taken
    for path in gone:
        path.unlink()
    return gone
