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
from orchestrator.events import Reporter
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


def key_id(key: str | None) -> str | None:
    """Which stack a secret key belongs to, without the key: a hash of it."""
    return hashlib.sha256(f"orch-stack:{key}".encode()).hexdigest()[:16] if key else None


def stack_id(directory: Path) -> str | None:
    """Which stack this is: a hash of its Open WebUI secret key (None before the first orch up)."""
    return key_id(read_env(directory / ".env").get("WEBUI_SECRET_KEY"))


def data_id() -> str | None:
    """The stack of an Open WebUI data directory mounted on its own (a volume): its secret key comes in the environment."""
    return key_id(os.environ.get("WEBUI_SECRET_KEY"))


def default_path(folder: Path, label: str = "manual") -> Path:
    """A dated name that sorts by time and is not taken (two backups in one second get .2, .3, ...)."""
    stamp, n = time.strftime('%Y%m%d-%H%M%S', time.gmtime()), 1
    while (path := folder / f"orch-backup-{stamp}{f'.{n}' if n > 1 else ''}-{label}.tar.gz").exists():
        n += 1
    return path


def create(directory: Path | None, out: Path | None = None, *, models: list[dict] | None = None, open_webui: str = "",
           reason: str = "orch backup", data: Path | None = None, label: str = "manual") -> Path:
    """Write a backup to `out` (a file, or a folder for a dated name; the stack's backups/ by default); it appears only
    when complete, its dated name ending in `label` (manual, scheduled, before-upgrade: what prune tells apart).
    `data` is Open WebUI's data directory when it is not the stack's own (a copy out of a Docker volume, a Kubernetes
    volume); with no `directory`, WEBUI_SECRET_KEY in the environment says which stack it is."""
    if data is not None and directory is None:
        ident = data_id()
        if ident is None:
            raise BadInput("WEBUI_SECRET_KEY is not set: a backup of a data directory is tied to its stack by that key "
                           "(the CronJob takes it from the open-webui Secret)")
    else:
        ident = stack_id(directory)
        if ident is None:
            raise OrchError(f"{directory} holds no stack to back up (no .env): run orch up first, or pass --dir")
    if data is not None and not (data / DATABASE).is_file():
        raise BadInput(f"{data} holds no {DATABASE}: pass --webui-data with Open WebUI's DATA_DIR")
    if out is None or out.is_dir():
        out = default_path(out or directory / "backups", label)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".backup-") as tmp:
        staged = Path(tmp)
        files = _stage(directory, staged, data)
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


def _stage(directory: Path | None, staged: Path, data: Path | None = None) -> list[str]:
    """The files to archive, copied into `staged`: the database through SQLite's backup API, the rest as they are.
    Open WebUI's data is archived under open-webui-data/ wherever it was read from, so any stack can take it back."""
    names = []
    for name in SETTINGS if directory is not None else ():
        if (directory / name).is_file():
            shutil.copy2(directory / name, staged / name)
            names.append(name)
    data = data if data is not None else directory / DATA
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
        rel = f"{DATA}/{path.relative_to(data).as_posix()}"
        if path.is_symlink() or not path.is_file() or path.name.startswith(DATABASE):  # webui.db, -wal, -shm: the copy above
            continue
        (staged / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, staged / rel)
        names.append(rel)
    return names


def read(archive: Path, into: Path, current: str | None = None) -> Manifest:
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
    if current is not None and manifest.stack != current:
        raise BadInput(f"{archive} is a backup of another stack (id {manifest.stack}, this one is {current}): "
                       "restore it into its own stack directory, or into a new one with --dir")
    return manifest


def restore(archive: Path, directory: Path, put_data=None) -> Manifest:
    """Put a checked backup in place of the stack's data and settings; the stack must be stopped. `put_data`, when
    given, puts Open WebUI's data where the runtime keeps it (a Docker volume) from the unpacked directory."""
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory, prefix=".restore-") as tmp:
        unpacked = Path(tmp) / "backup"
        manifest = read(archive, unpacked, stack_id(directory))
        if put_data is not None:
            if (unpacked / DATA).is_dir():
                put_data(unpacked / DATA)
            shutil.rmtree(unpacked / DATA, ignore_errors=True)
        put_back(unpacked, directory, Path(tmp) / "previous")
    return manifest


def restore_data(archive: Path, data: Path) -> Manifest:
    """Put a checked backup's Open WebUI data into a data directory mounted on its own (Open WebUI stopped).

    The directory itself stays (a volume's mount point cannot be renamed): its
    contents are swapped for the backup's, the old ones kept aside until all are in.
    """
    if not data.is_dir():
        raise BadInput(f"{data} is not a directory: pass --webui-data with Open WebUI's DATA_DIR")
    with tempfile.TemporaryDirectory(dir=data, prefix=".restore-") as tmp:
        unpacked = Path(tmp) / "backup"
        manifest = read(archive, unpacked, data_id())
        if not (unpacked / DATA).is_dir():
            raise BadInput(f"{archive} holds no Open WebUI data: use another backup")
        previous = Path(tmp) / "previous"
        previous.mkdir()
        old = [p.name for p in data.iterdir() if p.name != Path(tmp).name]
        try:
            for name in old:
                os.replace(data / name, previous / name)
            for path in (unpacked / DATA).iterdir():
                os.replace(path, data / path.name)
        except OSError as e:
            for path in data.iterdir():
                if path.name != Path(tmp).name and path.name not in old:
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
            for name in old:
                if (previous / name).exists():
                    os.replace(previous / name, data / name)
            raise OrchError(f"could not restore into {data}: {e}; the data is as it was") from None
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


def before_upgrade(directory: Path, old: str, new: str, reporter: Reporter, data: Path | None = None) -> Path:
    """The backup orch up takes before Open WebUI changes, said in one note; the last KEEP of them are kept."""
    taken = create(directory, default_path(directory / "backups", "before-upgrade"), open_webui=old, reason=f"before {old} -> {new}",
                   data=data)
    reporter.note(f"Open WebUI changes ({old} -> {new}): backed up first to {taken}")
    prune(directory / "backups")
    return taken


def rolled_back(new: str, old: str, taken: Path | None, cause: Exception) -> OrchError:
    """The one line after an upgrade that failed and was rolled back, the same for every runtime."""
    return OrchError(f"Open WebUI {new} did not become healthy ({cause}); rolled back to {old}"
                     + (f" and the data as it was before ({taken})" if taken else " (no backup was taken: --no-backup, or there was no data yet)")
                     + ": orch logs open-webui")


def prune(folder: Path, keep: int = KEEP, label: str = "before-upgrade") -> list[Path]:
    """Delete all but the newest `keep` backups orch took with `label` (before upgrades, on a schedule) in `folder`;
    those a person took by hand are never deleted. Returns the ones deleted."""
    taken = sorted(folder.glob(f"orch-backup-*-{label}.tar.gz"))
    gone = taken[:-keep] if keep > 0 else taken
    for path in gone:
        path.unlink()
    return gone
