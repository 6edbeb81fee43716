"""What a backup can and cannot do to the machine it is restored on, and a restore killed at any instant.

Every archive here is aimed at `orch restore` as a user would run it. The stacks are made here (a real SQLite
database in WAL mode, uploads, secrets); no server is involved: a restore runs with the stack stopped.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from orchestrator.files import sha256_file
from orchestrator.stack import backup, journal
from orchestrator.stack.config import read_env
from support import cli
from test_backup import digest, make_stack, rewrite, titles

CHILD = Path(__file__).with_name("paused_child.py")


def paused_restore(stack: Path, archive: Path, step: str, resume: Path) -> subprocess.Popen:
    """A restore (the library call orch restore makes) stopped at `step`: it has said so once this returns."""
    proc = subprocess.Popen([sys.executable, str(CHILD), step, str(resume), "restore", str(stack), str(archive)], stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    line = proc.stderr.readline()
    assert line.strip() == f"paused after {step}", line + proc.stderr.read()
    return proc


def cve_2025_4517(out: Path, victim: str, depth: int, content: bytes) -> Path:
    """CPython's published bypass of tarfile's data filter: symlinks whose resolved path passes PATH_MAX (realpath then
    stops resolving), a link out through them, a hard link to a file outside, and a write through that hard link."""
    comp, steps, path = "d" * 247, "abcdefghijklmnop", ""

    def add(tar, name, kind, link="", data=None):
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, link
        info.size = len(data) if data is not None else 0
        tar.addfile(info, io.BytesIO(data) if data is not None else None)

    with tarfile.open(out, "w:gz") as tar:
        for step in steps:
            add(tar, os.path.join(path, comp), tarfile.DIRTYPE)
            add(tar, os.path.join(path, step), tarfile.SYMTYPE, comp)
            path = os.path.join(path, comp)
        deep = os.path.join(*steps, "l" * 254)
        add(tar, deep, tarfile.SYMTYPE, "../" * len(steps))
        add(tar, "escape", tarfile.SYMTYPE, deep + "/.." * depth)
        add(tar, "victimlink", tarfile.LNKTYPE, f"escape/{victim}")
        add(tar, "victimlink", tarfile.REGTYPE, data=content)
        add(tar, "escape2", tarfile.SYMTYPE, deep + "/.." * depth)
        add(tar, "escape2/new-file-beside-the-stack", tarfile.REGTYPE, data=content)
    return out


def beside(root: Path) -> dict[str, str]:
    """Every file under `root` except the stack itself: what a restore must never touch."""
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*"))
            if p.is_file() and "stack" not in p.relative_to(root).parts}


@pytest.mark.parametrize("into", ["an existing stack", "a new stack directory"])
def test_the_published_tarfile_bypass_writes_nothing_outside_the_stack(tmp_path, into):
    root = tmp_path / "machine"
    stack = root / "stack"
    make_stack(stack, ["keep me"]) if into == "an existing stack" else stack.mkdir(parents=True)
    (root / "victim.txt").write_text("the user's own file\n")
    # orch unpacks two levels below the stack (stack/.restore-*/incoming): three '..' reach the victim's directory
    crafted = cve_2025_4517(tmp_path / "crafted.tar.gz", "victim.txt", 3, b"written by the archive\n")
    if sys.version_info < (3, 11, 13):  # this Python's own filter is fooled by it: the archive is the real attack
        sandbox = tmp_path / "sandbox"
        (sandbox / "stack" / "x" / "y").mkdir(parents=True)
        (sandbox / "victim.txt").write_text("original\n")
        with tarfile.open(crafted) as tar:
            tar.extractall(sandbox / "stack" / "x" / "y", filter="data")
        assert (sandbox / "victim.txt").read_text() == "written by the archive\n"
    before_beside, before_stack = beside(root), digest(stack)
    proc = cli("restore", str(crafted), "--dir", str(stack), check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "holds a symbolic link" in lines[0], proc.stderr
    assert beside(root) == before_beside and (root / "victim.txt").read_text() == "the user's own file\n"
    assert not (root / "new-file-beside-the-stack").exists()
    assert digest(stack) == before_stack and not list(stack.glob(".restore-*"))


def member(name: str, kind=tarfile.REGTYPE, data: bytes = b"x", link: str = "") -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data if kind == tarfile.REGTYPE else None


HOSTILE_MEMBERS = {
    "a symbolic link": (member("open-webui-data/link", tarfile.SYMTYPE, link="/etc/passwd"), "holds a symbolic link"),
    "a hard link": (member("open-webui-data/hard", tarfile.LNKTYPE, link=".env"), "holds a hard link"),
    "a device": (member("open-webui-data/dev", tarfile.CHRTYPE), "holds a device"),
    "a FIFO": (member("open-webui-data/fifo", tarfile.FIFOTYPE), "holds a FIFO"),
    "an absolute name": (member("/tmp/orch-absolute"), "is not a plain relative path"),
    "a name with ..": (member("open-webui-data/../../outside"), "is not a plain relative path"),
    "a name twice": (member(".env", data=b"WEBUI_ADMIN_PASSWORD=attacker\n"), "holds .env twice"),
}


@pytest.mark.parametrize("kind", list(HOSTILE_MEMBERS))
def test_an_archive_holding_anything_but_plain_files_is_refused_before_a_byte_is_written(tmp_path, kind):
    stack = make_stack(tmp_path / "stack", ["keep me"])
    good = backup.create(stack)
    (info, data), says = HOSTILE_MEMBERS[kind]
    hostile = tmp_path / "hostile.tar.gz"
    with tarfile.open(good) as tar, tarfile.open(hostile, "w:gz") as out:
        for m in tar.getmembers():
            out.addfile(m, tar.extractfile(m))
        out.addfile(info, io.BytesIO(data) if data is not None else None)
    before = digest(stack)
    proc = cli("restore", str(hostile), "--dir", str(stack), check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and says in lines[0], proc.stderr
    assert digest(stack) == before and not list(stack.glob(".restore-*")) and not Path("/tmp/orch-absolute").exists()


def test_an_archive_that_unpacks_past_the_limit_is_refused_before_it_is_unpacked(tmp_path, monkeypatch):
    """A backup of this stack, signed and whole, whose uploads unpack to more than a backup may hold."""
    stack = make_stack(tmp_path / "stack", ["keep me"])
    with open(stack / backup.DATA / "uploads" / "zeros.bin", "wb") as f:
        f.truncate(48 << 20)  # 48 MB of zeros: a few dozen kB compressed
    archive = backup.create(stack)
    assert archive.stat().st_size < 1 << 20
    (stack / backup.DATA / "uploads" / "zeros.bin").unlink()
    monkeypatch.setattr(backup, "MAX_UNPACKED", 16 << 20)
    before = digest(stack)
    proc = cli("restore", str(archive), "--dir", str(stack), check=False)
    assert proc.returncode == 2 and "would unpack to 0.05 GB, more than the 0.02 GB a backup may hold" in proc.stderr, proc.stderr
    assert digest(stack) == before and not list(stack.glob(".restore-*"))


def forged(name: str, data: bytes) -> bytes:
    """What an attacker holding an archive would change: the admin password."""
    if name == ".env":
        return data.replace(b"WEBUI_ADMIN_PASSWORD=", b"WEBUI_ADMIN_PASSWORD=attacker-")
    return data


def resigned_without_the_key(archive: Path, out: Path) -> Path:
    """The archive altered and its manifest's sha256 values recomputed: all a forger can do without the stack's key."""
    changed = {}

    def change(name: str, data: bytes) -> bytes:
        if name == "manifest.json":
            return data
        new = forged(name, data)
        if new != data:
            changed[name] = new
        return new

    rewrite(archive, tmp := out.with_suffix(".tmp"), change)
    import hashlib

    def fix(name: str, data: bytes) -> bytes:
        if name != "manifest.json":
            return data
        manifest = json.loads(data)
        for n, content in changed.items():
            manifest["files"][n] = hashlib.sha256(content).hexdigest()
        return json.dumps(manifest).encode()

    return rewrite(tmp, out, fix)


def test_an_archive_altered_with_its_sha256_values_recomputed_is_refused(tmp_path):
    stack = make_stack(tmp_path / "stack", ["keep me"])
    archive = backup.create(stack)
    bad = resigned_without_the_key(archive, tmp_path / "forged.tar.gz")
    before = digest(stack)
    proc = cli("restore", str(bad), "--dir", str(stack), check=False)
    assert proc.returncode == 2 and "is not signed by this stack's key" in proc.stderr, proc.stderr
    assert digest(stack) == before and "attacker" not in (stack / ".env").read_text()


def test_an_old_unsigned_backup_goes_only_into_a_new_stack(tmp_path):
    """A backup orch wrote before it signed them (format 1) is still a user's data: a new stack directory takes it."""
    stack = make_stack(tmp_path / "stack", ["from before signing"])
    archive = backup.create(stack)
    old = rewrite(archive, tmp_path / "format1.tar.gz",
                  lambda n, d: None if n == backup.SIGNATURE else d.replace(b"orch-backup/2", b"orch-backup/1") if n == "manifest.json" else d)
    refused = cli("restore", str(old), "--dir", str(stack), check=False)
    assert refused.returncode == 2 and "restore it into a new stack directory with --dir" in refused.stderr
    cli("restore", str(old), "--dir", str(tmp_path / "new"))
    assert titles(tmp_path / "new") == ["from before signing"]


def test_a_signed_archive_with_no_key_to_check_it_by_is_refused_even_in_a_new_stack(tmp_path):
    """Into a new stack directory the archive's own .env checks its signature; one without a .env cannot be checked."""
    stack = make_stack(tmp_path / "stack", ["x"])
    archive = backup.create(stack)
    keyless = rewrite(archive, tmp_path / "keyless.tar.gz", lambda n, d: None if n == ".env" else b"-\n" if n == backup.SIGNATURE
                      else json.dumps({**json.loads(d), "files": {k: v for k, v in json.loads(d)["files"].items() if k != ".env"}}).encode()
                      if n == "manifest.json" else d)
    proc = cli("restore", str(keyless), "--dir", str(tmp_path / "new"), check=False)
    assert proc.returncode == 2 and "holds no .env with the key to check it by" in proc.stderr, proc.stderr
    assert not (tmp_path / "new" / backup.DATA).exists()


def test_a_restore_never_brings_back_which_program_runs(tmp_path, monkeypatch):
    """An older backup holds open-webui.json (with an executable's path, as orch once wrote it): it is not put back."""
    stack = make_stack(tmp_path / "stack", ["x"])
    (stack / "open-webui.json").write_text(json.dumps({"package": "open-webui==0.12.4", "exe": "/tmp/attacker/bin/open-webui"}))
    with monkeypatch.context() as older:
        older.setattr(backup, "SETTINGS", (*backup.SETTINGS, "open-webui.json"))  # as an older orch archived it
        archive = backup.create(stack)
    fresh = tmp_path / "fresh"
    cli("restore", str(archive), "--dir", str(fresh))
    assert titles(fresh) == ["x"] and not (fresh / "open-webui.json").exists()


def modes(root: Path) -> dict[str, str]:
    """The mode of the directory and of all in it, but SQLite's own -wal and -shm (a backup holds the database whole)."""
    return {p.relative_to(root.parent).as_posix(): oct(stat.S_IMODE(p.stat().st_mode)) for p in [root, *sorted(root.rglob("*"))]
            if not p.name.startswith(f"{backup.DATABASE}-")}


def test_a_restore_keeps_the_modes_and_never_widens_them(tmp_path):
    stack = make_stack(tmp_path / "stack", ["private chat"])
    data = stack / backup.DATA
    for path in [data, *data.rglob("*")]:
        path.chmod(0o700 if path.is_dir() else 0o600)
    archive = backup.create(stack)
    before = modes(data)
    os.umask(0o022)  # a user's usual umask: what made 0644 files and 0755 directories before
    cli("restore", str(archive), "--dir", str(stack))
    assert modes(data) == before and set(before.values()) == {"0o600", "0o700"}
    assert oct(stat.S_IMODE((stack / ".env").stat().st_mode)) == "0o600"


# --- a restore killed at each step --------------------------------------------------------------------------------------

def stack_state(stack: Path) -> dict:
    """Everything a restore may change: the settings, the secrets, the data."""
    files = {p.relative_to(stack).as_posix(): sha256_file(p) for p in sorted(stack.rglob("*")) if p.is_file()
             and p.relative_to(stack).parts[0] in (*backup.SETTINGS, backup.DATA) and not p.name.startswith("webui.db")}
    return files | {"chats": titles(stack)}


STEPS = ["restore unpacked", "restore journal", "restore aside open-webui-data", "restore in open-webui-data",
         "restore aside .env", "restore in .env", "restore aside settings.json", "restore in settings.json", "restore done"]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill -9", "Ctrl-C"])
@pytest.mark.parametrize("step", STEPS)
def test_a_restore_killed_at_any_step_leaves_the_old_state_or_the_new_whole(tmp_path, step, sig):
    stack = make_stack(tmp_path / "stack", ["in the backup"])
    archive = backup.create(stack)
    new = stack_state(stack)
    with sqlite3.connect(stack / backup.DATA / backup.DATABASE) as db:
        db.execute("INSERT INTO chat VALUES ('9', 'written after the backup')")
    (stack / "settings.json").write_text('{"ENABLE_SIGNUP": "True"}\n')
    (stack / backup.DATA / "uploads" / "later.txt").write_text("an upload after the backup\n")
    old = stack_state(stack)
    assert old != new
    resume = tmp_path / "resume"
    proc = paused_restore(stack, archive, step, resume)
    try:
        proc.send_signal(sig)
        if sig == signal.SIGINT:
            resume.touch()  # Ctrl-C first, then the step goes on as if the key had been pressed mid-way
        proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.stderr.close()
    after_kill = stack_state(stack) if (stack / backup.DATA / backup.DATABASE).is_file() else None
    if sig == signal.SIGINT:
        assert after_kill in (old, new), "Ctrl-C leaves the old state or the new, whole, at once"
    status = cli("status", "--dir", str(stack), check=False)  # the next command finishes the job first
    assert "Traceback" not in status.stderr
    assert stack_state(stack) in (old, new)
    assert read_env(stack / ".env")["WEBUI_SECRET_KEY"], "the secrets are never lost"
    assert not (stack / journal.JOURNAL).exists() and not list(stack.glob(".restore-*")), "nothing left half-done"
    again = cli("restore", str(archive), "--dir", str(stack))  # and the backup is still this stack's
    assert "restored" in again.stdout and stack_state(stack) == new


def test_a_journal_left_by_a_kill_is_finished_by_orch_up_restore_backup_and_status(tmp_path):
    """Each command that opens a stack rolls an interrupted swap back before it does anything else."""
    for command in (["status"], ["backup"], ["restore", "ARCHIVE"]):
        stack = make_stack(tmp_path / command[0] / "stack", ["in the backup"])
        archive = backup.create(stack)
        (stack / "settings.json").write_text('{"ENABLE_SIGNUP": "True"}\n')
        old = stack_state(stack)
        proc = paused_restore(stack, archive, "restore aside .env", tmp_path / command[0] / "never")
        proc.kill()
        proc.wait()
        proc.stderr.close()
        assert not (stack / ".env").exists() and (stack / journal.JOURNAL).exists(), "the kill left .env aside"
        args = [str(archive) if a == "ARCHIVE" else a for a in command]
        done = cli(*args, "--dir", str(stack), check=False)
        assert "was rolled back" in done.stderr, done.stderr
        assert (stack / ".env").is_file() and not (stack / journal.JOURNAL).exists()
        if command[0] != "restore":
            assert stack_state(stack) == old
