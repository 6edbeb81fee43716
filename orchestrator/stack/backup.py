"""Backups of a native stack: Open WebUI's data (chats, users, keys, uploads), the stack's settings and secrets, and the
list of Ollama's models, in one archive that is checked whole before anything is restored.

The database is copied with SQLite's online backup API, so a backup taken while
Open WebUI writes is consistent (a file copy of webui.db and its WAL may not be).
The archive is a gzip'd tar, mode 0600 (it holds the secret key and the admin
password, so whoever holds it holds the stack), with manifest.json naming every
file's sha256 and the stack it came from (a hash of the stack's secret key, not
the key), and manifest.sig, an HMAC of the manifest under a key derived from
the stack's secret key. Restore judges every member and the signature before it
writes a byte (orchestrator/archive.py), refuses a cut, altered or foreign archive in
one line, and swaps the data in through a journal (stack/journal.py). What a
restore never takes from an archive: which Open WebUI runs, or any program to
run; and revoked API keys stay revoked (stack/api_keys.py).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import shutil
import sqlite3
import stat
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from orchestrator import settings
from orchestrator.errors import BadInput, OrchError
from orchestrator.events import SILENT, Reporter
from orchestrator.files import atomic_path, sha256_file
from orchestrator import archive as archive_mod
from orchestrator.stack.config import parse_env, read_env

FORMAT = "orch-backup/2"  # /2: the manifest is signed (manifest.sig)
FORMATS = ("orch-backup/1", FORMAT)
SIGNATURE = "manifest.sig"
MAX_UNPACKED = 100 << 30  # the most an archive may unpack to, whatever the disk holds
DATA = "open-webui-data"  # Open WebUI's DATA_DIR inside the stack directory
DATABASE = "webui.db"
# the stack's own files a backup holds and a restore puts back; never open-webui.json (older backups hold it): which
# Open WebUI runs is orch's own record, not an archive's
SETTINGS = (".env", "settings.json")
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


BACKUP_KEY_ENV, STACK_ID_ENV = settings.BACKUP_KEY_ENV, settings.STACK_ID_ENV  # as the Kubernetes backup Job gets them


@dataclass(frozen=True)
class Signer:
    """Which stack a backup is of, and the key its manifest is signed with: both derived from the stack's
    WEBUI_SECRET_KEY, and neither gives it back (that key signs Open WebUI's sessions)."""

    stack: str
    key: bytes

    @classmethod
    def of_secret(cls, secret: str) -> "Signer":
        return cls(key_id(secret), hashlib.sha256(f"orch-backup-mac:{secret}".encode()).digest())

    def as_env(self) -> str:
        """The lines of the Secret the Kubernetes backup Job reads (data_signer takes them back)."""
        return f"{BACKUP_KEY_ENV}={self.key.hex()}\n{STACK_ID_ENV}={self.stack}\n"


def data_signer() -> Signer:
    """For Open WebUI's data mounted on its own (a Kubernetes volume): ORCH_BACKUP_KEY and ORCH_STACK_ID from the
    Job's Secret, or WEBUI_SECRET_KEY itself."""
    secret, key, stack = settings.backup_signing()
    if secret:
        return Signer.of_secret(secret)
    try:
        if len(key) == 64 and stack:
            return Signer(stack, bytes.fromhex(key))
    except ValueError:
        pass
    raise BadInput(f"neither {BACKUP_KEY_ENV} with {STACK_ID_ENV} nor WEBUI_SECRET_KEY is set: a backup of a data directory "
                   "is signed and tied to its stack by them (the CronJob takes them from the orch-backup Secret)")


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
    volume); with no `directory`, WEBUI_SECRET_KEY in the environment says which stack it is. The manifest is signed
    with a key derived from the stack's secret key, which a restore checks before it writes anything."""
    if data is not None and directory is None:
        signer = data_signer()
    else:
        secret = read_env(directory / ".env").get("WEBUI_SECRET_KEY")
        if not secret:
            raise OrchError(f"{directory} holds no stack to back up (no .env): run orch up first, or pass --dir")
        signer = Signer.of_secret(secret)
    if data is not None and not (data / DATABASE).is_file():
        raise BadInput(f"{data} holds no {DATABASE}: pass --webui-data with Open WebUI's DATA_DIR")
    if out is None or out.is_dir():
        out = default_path(out or directory / "backups", label)
    out.parent.mkdir(parents=True, exist_ok=True)
    # the staging folder is removed before the archive takes its name: once the name is there, nothing else of this
    # backup is, even for an orch killed the moment after
    with atomic_path(out) as part:
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=".backup-") as tmp:
            staged = Path(tmp)
            files = _stage(directory, staged, data)
            manifest = Manifest(signer.stack, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), open_webui,
                                {name: sha256_file(staged / name) for name in files}, models or [], reason)
            raw_manifest = manifest.as_json().encode()
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
                for name, content in (("manifest.json", raw_manifest), (SIGNATURE, sign(raw_manifest, signer.key).encode() + b"\n")):
                    info = tarfile.TarInfo(name)
                    info.size, info.mode, info.mtime = len(content), 0o600, int(time.time())
                    tar.addfile(info, io.BytesIO(content))
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
        os.chmod(staged / DATA / DATABASE, stat.S_IMODE(os.stat(data / DATABASE).st_mode))  # its mode, not the umask's
        names.append(f"{DATA}/{DATABASE}")
    for path in sorted(data.rglob("*")) if data.is_dir() else []:
        rel = f"{DATA}/{path.relative_to(data).as_posix()}"
        if path.is_symlink() or not path.is_file() or path.name.startswith(DATABASE):  # webui.db, -wal, -shm: the copy above
            continue
        (staged / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, staged / rel)
        names.append(rel)
    return names


def read(archive: Path, into: Path, signer: Signer | None = None, *, limit: int | None = None) -> Manifest:
    """Check `archive` whole and unpack it into `into` (a new, private directory): every member a plain file or
    directory, the manifest signed by `signer` and of its stack, every file listed with its sha256 and nothing else.
    The manifest is judged before any file is written.

    With no `signer` (a stack directory with no secrets yet: a new machine), the archive's own .env signs it: that
    catches damage, not a forger, and a forger's archive is then only a stack of its own. A cut, altered or foreign
    archive is a BadInput naming what is wrong.
    """
    with archive_mod.open_checked(archive, into, limit=MAX_UNPACKED if limit is None else limit) as listing:
        manifest = _manifest(listing, archive)
        current = signer.stack if signer is not None else None
        if current is not None and manifest.stack != current:
            raise BadInput(f"{archive} is a backup of another stack (id {manifest.stack}, this one is {current}): "
                           "restore it into its own stack directory, or into a new one with --dir")
        signature = listing.read_small(SIGNATURE)
        if signature is None and current is not None:
            raise BadInput(f"{archive} was written before orch signed its backups, so this stack cannot tell it from an "
                           "altered one: restore it into a new stack directory with --dir")
        if signature is not None:  # with no signature, into a stack that has nothing yet: checked by sha256 alone
            key = signer.key if signer is not None else _archived_key(listing)
            if key is None:
                raise BadInput(f"{archive} is signed but holds no .env with the key to check it by: it was not written by "
                               "orch; use another backup")
            if not hmac.compare_digest(signature.decode(errors="replace").strip(), sign(listing.read_small("manifest.json"), key)):
                raise BadInput(f"{archive}: its manifest is not signed by this stack's key: it was altered, or made for "
                               "another stack; use another backup")
        listed = set(manifest.files)
        present = set(listing.files) - {"manifest.json", SIGNATURE}
        if present != listed:
            extra = sorted(present ^ listed)[:3]
            raise BadInput(f"{archive} does not hold what its manifest lists ({', '.join(extra)}): it was altered; use another backup")
        into.mkdir(mode=0o700, parents=True, exist_ok=True)
        for name, digest in manifest.files.items():
            if listing.extract(name, into) != digest:
                raise BadInput(f"{archive}: {name} does not match its sha256 in the manifest: it was altered; use another backup")
    return manifest


def _manifest(listing, archive: Path) -> Manifest:
    try:
        raw = json.loads(listing.read_small("manifest.json") or b"")
        if raw.pop("format") not in FORMATS:
            raise ValueError
        manifest = Manifest(**raw)
        if not isinstance(manifest.files, dict) or not all(isinstance(v, str) for v in manifest.files.values()):
            raise ValueError
    except (ValueError, TypeError, KeyError, AttributeError):
        raise BadInput(f"{archive} has no readable orch backup manifest: it is not a backup orch wrote") from None
    return manifest


def _archived_key(listing) -> bytes | None:
    """The signing key of the secret in the archive's own .env: what checks a backup restored where no stack has
    secrets yet."""
    secret = parse_env((listing.read_small(".env") or b"").decode("utf-8", errors="replace")).get("WEBUI_SECRET_KEY")
    return Signer.of_secret(secret).key if secret else None


def sign(manifest: bytes, key: bytes) -> str:
    """The manifest's HMAC-SHA256 under the stack's backup key (Signer)."""
    return hmac.new(key, manifest, hashlib.sha256).hexdigest()


def restore(archive: Path, directory: Path, put_data=None, reporter: Reporter = SILENT) -> Manifest:
    """Put a checked backup in place of the stack's data and settings; the stack must be stopped. `put_data`, when
    given, puts Open WebUI's data where the runtime keeps it (a Docker volume) from the unpacked directory, inside
    the journaled swap: a failure there puts the settings back too."""
    from orchestrator.stack import journal

    stage = journal.staging(directory)
    try:
        secret = read_env(directory / ".env").get("WEBUI_SECRET_KEY")
        manifest = read(archive, stage / "incoming", Signer.of_secret(secret) if secret else None)
        reporter.reached("restore unpacked")
        names = SETTINGS + (() if put_data is not None else (DATA,))
        then = (lambda: put_data(stage / "incoming" / DATA)) if put_data is not None and (stage / "incoming" / DATA).is_dir() else None
        journal.swap(directory, stage, names, then, reporter)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return manifest


def restore_data(archive: Path, data: Path, reporter: Reporter = SILENT) -> Manifest:
    """Put a checked backup's Open WebUI data into a data directory mounted on its own (Open WebUI stopped).

    The directory itself stays (a volume's mount point cannot be renamed): its
    contents are swapped for the backup's through the same journal as a stack's.
    """
    from orchestrator.stack import journal

    if not data.is_dir():
        raise BadInput(f"{data} is not a directory: pass --webui-data with Open WebUI's DATA_DIR")
    signer = data_signer()
    journal.recover(data, reporter)
    stage = journal.staging(data)
    try:
        unpacked = stage / "unpacked"
        manifest = read(archive, unpacked, signer)
        if not (unpacked / DATA).is_dir():
            raise BadInput(f"{archive} holds no Open WebUI data: use another backup")
        os.replace(unpacked / DATA, stage / "incoming")
        names = {p.name for p in (*data.iterdir(), *(stage / "incoming").iterdir())}
        journal.swap(data, stage, tuple(sorted(n for n in names if not n.startswith(journal.STAGING_PREFIX) and n != journal.JOURNAL)),
                     reporter=reporter)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return manifest


def before_upgrade(directory: Path, old: str, new: str, reporter: Reporter, data: Path | None = None) -> Path:
    """The backup orch up takes before Open WebUI changes, said in one note; the last KEEP of them are kept."""
    taken = create(directory, default_path(directory / "backups", "before-upgrade"), open_webui=old, reason=f"before {old} -> {new}",
                   data=data)
    reporter.note(f"Open WebUI changes ({old} -> {new}): backed up first to {taken}")
    prune(directory / "backups")
    return taken


def rolled_back(new: str, old: str, taken: Path | None, cause: Exception, why_not: str = "") -> OrchError:
    """The one line after an upgrade that failed and was rolled back, the same for every runtime."""
    return OrchError(f"Open WebUI {new} did not become healthy ({cause}); rolled back to {old}"
                     + (f" and the data as it was before ({taken})" if taken else f" (no backup was taken: {why_not or 'there was no data yet'})")
                     + ": orch logs open-webui")


def prune(folder: Path, keep: int = KEEP, label: str = "before-upgrade") -> list[Path]:
    """Delete all but the newest `keep` backups orch took with `label` (before upgrades, on a schedule) in `folder`;
    those a person took by hand are never deleted. Returns the ones deleted."""
    taken = sorted(folder.glob(f"orch-backup-*-{label}.tar.gz"))
    gone = taken[:-keep] if keep > 0 else taken
    for path in gone:
        path.unlink()
    return gone
