"""orch backup and orch restore, and orch up's backup and rollback around a change of Open WebUI.

The archive checks run on a stack directory made here (a real SQLite database, uploads and secrets). The round trip
and the rollback run the native stack for real: the real Ollama (built from source) and the real Open WebUI from PyPI,
its chats created and read through its own API.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import shutil
import sqlite3
import stat
import sys
import tarfile
from pathlib import Path

import httpx
import pytest

from orchestrator.errors import OrchError
from orchestrator.files import sha256_file
from orchestrator.stack import backup
from orchestrator.stack.config import WEBUI_VERSION, read_env, write_env
from orchestrator.stack.runtime import RELEASE_RECORD, StackRecord
from support import cli, free_port, orch


def make_stack(directory: Path, chats: list[str]) -> Path:
    """A stopped native stack as orch up leaves it: secrets, settings, Open WebUI's database in WAL mode, an upload."""
    data = directory / backup.DATA
    (data / "uploads").mkdir(parents=True)
    write_env(directory / ".env")
    (directory / "settings.json").write_text('{"ENABLE_SIGNUP": "False"}\n')
    StackRecord("native", "http://127.0.0.1:9", "http://127.0.0.1:9").save(directory)
    db = sqlite3.connect(data / backup.DATABASE)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE chat (id TEXT PRIMARY KEY, title TEXT)")
    db.executemany("INSERT INTO chat VALUES (?, ?)", [(str(i), t) for i, t in enumerate(chats)])
    db.commit()
    db.close()
    (data / "uploads" / "notes.txt").write_text("用户上传的文件\n")
    return directory


def digest(directory: Path) -> dict[str, str]:
    return {p.relative_to(directory).as_posix(): sha256_file(p) for p in sorted(directory.rglob("*"))
            if p.is_file() and "backups" not in p.parts}


def titles(directory: Path) -> list[str]:
    db = sqlite3.connect(directory / backup.DATA / backup.DATABASE)
    try:
        return [t for (t,) in db.execute("SELECT title FROM chat ORDER BY id")]
    finally:
        db.close()


def test_a_backup_round_trips_the_database_uploads_and_secrets(tmp_path):
    stack = make_stack(tmp_path / "stack", ["第一次对话", "second chat"])
    held = sqlite3.connect(stack / backup.DATA / backup.DATABASE)  # Open WebUI still has the database open, WAL and all
    held.execute("INSERT INTO chat VALUES ('2', 'written after the last checkpoint')")
    held.commit()
    proc = cli("backup", "--dir", str(stack))
    archive = Path(proc.stdout.split(" to ", 1)[1].split(" (", 1)[0])
    held.close()
    assert oct(archive.stat().st_mode & 0o777) == "0o600" and archive.parent == stack / "backups"
    secret = read_env(stack / ".env")["WEBUI_SECRET_KEY"]

    shutil.rmtree(stack / backup.DATA)
    (stack / ".env").unlink()
    cli("restore", str(archive), "--dir", str(stack))
    assert titles(stack) == ["第一次对话", "second chat", "written after the last checkpoint"]
    assert (stack / backup.DATA / "uploads" / "notes.txt").read_text() == "用户上传的文件\n"
    assert read_env(stack / ".env")["WEBUI_SECRET_KEY"] == secret and oct((stack / ".env").stat().st_mode & 0o777) == "0o600"


def rewrite(archive: Path, out: Path, change) -> Path:
    """A copy of `archive` with its members passed through `change(name, data) -> data | None` (None drops one)."""
    with tarfile.open(archive, "r:gz") as tar, tarfile.open(out, "w:gz") as new:
        for member in tar.getmembers():
            data = change(member.name, tar.extractfile(member).read())
            if data is not None:
                member.size = len(data)
                new.addfile(member, io.BytesIO(data))
    return out


def tampered_manifest(name: str, data: bytes) -> bytes:
    if name != "manifest.json":
        return data
    manifest = json.loads(data)
    manifest["files"][f"{backup.DATA}/{backup.DATABASE}"] = "0" * 64
    return json.dumps(manifest).encode()


BAD_ARCHIVES = {
    "cut short": (lambda a, out: out.write_bytes(a.read_bytes()[: a.stat().st_size // 2]) and out, "is not a complete orch backup"),
    "a manifest that was altered": (lambda a, out: rewrite(a, out, tampered_manifest), "is not signed by this stack's key"),
    "a file that was altered": (lambda a, out: rewrite(a, out, lambda n, d: d + b"x" if n.endswith("notes.txt") else d),
                                "does not match its sha256"),
    "a file added": (lambda a, out: rewrite(a, out, lambda n, d: d) and _append(out), "does not hold what its manifest lists"),
    "not a backup at all": (lambda a, out: out.write_bytes(gzip.compress(b"hello")) and out, "is not a complete orch backup"),
    "a text file": (lambda a, out: out.write_bytes(b"my-host\n") and out, "is not an orch backup (not a gzip'd tar)"),
    "a directory": (lambda a, out: out.mkdir() or out, "is a directory: pass one backup file in it"),
}


def _append(out: Path) -> Path:
    with tarfile.open(out, "r:gz") as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(out, "w:gz") as tar:
        for m, data in members + [(tarfile.TarInfo(f"{backup.DATA}/uploads/extra.sh"), b"echo hi\n")]:
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    return out


@pytest.mark.parametrize("kind", list(BAD_ARCHIVES))
def test_a_bad_archive_is_refused_in_one_line_and_the_data_is_untouched(tmp_path, kind):
    stack = make_stack(tmp_path / "stack", ["keep me"])
    good = backup.create(stack)
    make, says = BAD_ARCHIVES[kind]
    bad = make(good, tmp_path / "bad.tar.gz")
    before = digest(stack)
    proc = cli("restore", str(bad), "--dir", str(stack), check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and says in lines[0], proc.stderr
    assert digest(stack) == before and not list(stack.glob(".restore-*"))


def test_a_backup_of_another_stack_is_refused(tmp_path):
    mine, theirs = make_stack(tmp_path / "mine", ["mine"]), make_stack(tmp_path / "theirs", ["theirs"])
    before = digest(mine)
    proc = cli("restore", str(backup.create(theirs)), "--dir", str(mine), check=False)
    assert proc.returncode == 2 and "is a backup of another stack" in proc.stderr and digest(mine) == before
    fresh = tmp_path / "new-machine"  # a stack directory with nothing in it yet takes it: moving to another box
    cli("restore", str(backup.create(theirs)), "--dir", str(fresh))
    assert titles(fresh) == ["theirs"]


def test_orch_up_keeps_the_last_five_backups_taken_before_upgrades(tmp_path):
    stack = make_stack(tmp_path / "stack", ["x"])
    for i in range(7):
        (stack / "backups").mkdir(exist_ok=True)
        (stack / "backups" / f"orch-backup-2026120{i}-000000-before-upgrade.tar.gz").write_bytes(b"")
    manual = backup.create(stack)
    gone = backup.prune(stack / "backups")
    assert [p.name[12:20] for p in gone] == ["20261200", "20261201"]
    assert manual.is_file() and len(list((stack / "backups").glob("*before-upgrade*"))) == 5


# --- the Docker runtime: its data in a volume, read through the engine (a double of it: no engine runs here) ---------

@pytest.fixture
def docker_stack(tmp_path, monkeypatch):
    """A Docker stack as orch up leaves it, its Open WebUI volume holding chats still in the write-ahead log."""
    stack = make_stack(tmp_path / "stack", ["第一次对话", "second chat"])
    StackRecord("docker", "http://127.0.0.1:9", "http://127.0.0.1:3000").save(stack)
    (stack / "compose.yaml").write_text("services: {}\n")
    volume = tmp_path / "volumes" / "orch_open-webui"
    volume.parent.mkdir()
    shutil.move(stack / backup.DATA, volume)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(f"#!/bin/sh\nexec {sys.executable} {Path(__file__).with_name('docker_double.py')} \"$@\"\n")
    (bin_dir / "docker").chmod(0o755)
    state = tmp_path / "engine-state"
    state.write_text(json.dumps({"running": ["ollama", "open-webui"], "image": "ghcr.io/open-webui/open-webui:v0.12.3"}))
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("DOCKER_DOUBLE_VOLUME", str(volume))
    monkeypatch.setenv("DOCKER_DOUBLE_STATE", str(state))
    return stack, volume, state


def test_a_docker_stack_is_backed_up_through_the_container_and_restored_into_its_volume(docker_stack):
    stack, volume, state = docker_stack
    writer = sqlite3.connect(volume / backup.DATABASE)  # Open WebUI writing: a chat in the WAL, not yet in webui.db
    writer.execute("INSERT INTO chat VALUES ('9', 'still in the WAL')")
    writer.commit()
    try:
        made = orch("backup", "--dir", str(stack))
    finally:
        writer.close()
    archive = Path(made.stdout.split(" to ", 1)[1].split(" (", 1)[0])
    calls = [json.loads(line) for line in Path(f"{state}.log").read_text().splitlines()]
    assert any(c[-3:-1] == ["python3", "-c"] and "backup" in c[-1] for c in calls), "the database is copied by SQLite inside the container"
    assert not list((volume.parent / "container-tmp").glob("*")) and not list(stack.glob(".backup-copy-*")), "no copy left behind"

    with sqlite3.connect(volume / backup.DATABASE) as db:
        db.execute("DELETE FROM chat")
    (volume / "uploads" / "notes.txt").unlink()
    refused = orch("restore", str(archive), "--dir", str(stack), check=False)
    assert refused.returncode == 1 and "is running: stop it first with orch down" in refused.stderr
    orch("down", "--dir", str(stack))
    orch("restore", str(archive), "--dir", str(stack))
    db = sqlite3.connect(volume / backup.DATABASE)
    try:
        assert [t for (t,) in db.execute("SELECT title FROM chat ORDER BY id")] == ["第一次对话", "second chat", "still in the WAL"]
    finally:
        db.close()
    assert (volume / "uploads" / "notes.txt").read_text() == "用户上传的文件\n"
    assert not (stack / backup.DATA).exists(), "the data went back into the volume, not beside the stack"
    assert (stack / ".env").is_file() and stat.S_IMODE(archive.stat().st_mode) == 0o600


def chat_titles(database: Path) -> list[str]:
    db = sqlite3.connect(database)
    try:
        return [t for (t,) in db.execute("SELECT title FROM chat ORDER BY id")]
    except sqlite3.OperationalError as e:  # the table a bad migration dropped
        return [f"unreadable: {e}"]
    finally:
        db.close()


@pytest.mark.parametrize("was_running", [True, False], ids=["Open WebUI running", "Open WebUI stopped"])
@pytest.mark.parametrize("starts", [True, False], ids=["the new image starts", "the new image fails its health check"])
def test_a_docker_image_change_is_backed_up_first_and_a_failed_one_rolled_back(docker_stack, monkeypatch, starts, was_running):
    """The pinned image replacing an older one: the volume is backed up first (from the running container, or by a
    one-off container of the old image when it is stopped); a new image that fails (after its migration damaged the
    database) gives way to the old one, on the data as it was."""
    from orchestrator.events import SILENT
    from orchestrator.stack.config import WEBUI_IMAGE, StackPlan
    from orchestrator.stack.docker import DockerRuntime
    from orchestrator.stack.runtime import RELEASE_RECORD

    stack, volume, state = docker_stack
    old = json.loads(state.read_text())["image"]
    (stack / RELEASE_RECORD).write_text(json.dumps({"image": old}))  # as orch before this release wrote it
    if not was_running:
        state.write_text(json.dumps({"running": ["ollama"], "image": old}))
    if not starts:
        monkeypatch.setenv("DOCKER_DOUBLE_BROKEN_IMAGE", WEBUI_IMAGE)
    plan = StackPlan(stack, bind="127.0.0.1", port=free_port(), ollama_port=free_port())
    if starts:
        DockerRuntime().up(plan, wait=30, reporter=SILENT)
    else:
        with pytest.raises(OrchError, match=rf"Open WebUI {re.escape(WEBUI_IMAGE)} did not become healthy .*; "
                                            rf"rolled back to {re.escape(old)} and the data as it was before"):
            DockerRuntime().up(plan, wait=30, reporter=SILENT)
    (taken,) = sorted((stack / "backups").glob("*-before-upgrade.tar.gz"))
    with tarfile.open(taken) as tar:
        assert json.loads(tar.extractfile("manifest.json").read())["open_webui"] == old
    calls = [json.loads(line) for line in Path(f"{state}.log").read_text().splitlines()]
    assert any("run" in c and backup.DATABASE in c[-1] for c in calls) != was_running, "a stopped one is read by a one-off container"
    runs = json.loads(state.read_text())
    assert runs["image"] == (WEBUI_IMAGE if starts else old) and "open-webui" in runs["running"]
    assert json.loads((stack / RELEASE_RECORD).read_text())["release"] == runs["image"], "the record names what runs healthy"
    assert f"image: {runs['image']}" in (stack / "compose.yaml").read_text()
    assert chat_titles(volume / backup.DATABASE) == ["第一次对话", "second chat"]


# --- the native stack for real ----------------------------------------------------------------------------------------

class WebUI:
    """Open WebUI's own API, signed in as the admin orch made."""

    def __init__(self, url: str, stack: Path):
        env = read_env(stack / ".env")
        r = httpx.post(f"{url}/api/v1/auths/signin", json={"email": env["WEBUI_ADMIN_EMAIL"], "password": env["WEBUI_ADMIN_PASSWORD"]},
                       timeout=60)
        assert r.status_code == 200, r.text
        self.url, self.auth = url, {"Authorization": f"Bearer {r.json()['token']}"}

    def new_chat(self, title: str) -> str:
        chat = {"title": title, "messages": [{"role": "user", "content": "你好"}], "models": []}
        r = httpx.post(f"{self.url}/api/v1/chats/new", headers=self.auth, json={"chat": chat}, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()["id"]

    def chats(self) -> list[str]:
        r = httpx.get(f"{self.url}/api/v1/chats/list", headers=self.auth, timeout=60)
        assert r.status_code == 200, r.text
        return sorted(c["title"] for c in r.json())

    def delete(self, chat_id: str) -> None:
        assert httpx.delete(f"{self.url}/api/v1/chats/{chat_id}", headers=self.auth, timeout=60).status_code == 200


def broken_webui(where: Path) -> Path:
    """An Open WebUI install whose start exits at once: the new release that does not come up."""
    from orchestrator.stack.native import webui_package

    (where / "bin").mkdir(parents=True)
    exe = where / "bin" / "open-webui"
    exe.write_text("#!/bin/sh\necho 'Traceback: alembic migration failed (this install is broken on purpose)' >&2\nexit 3\n")
    exe.chmod(0o755)
    (where / ".orch-installed").write_text(webui_package() + "\n")
    return where


@pytest.mark.timeout(1500)
def test_backup_restore_and_a_failed_upgrade_rolled_back_with_the_real_stack(real_ollama_on_path, tiny_build, isolated_home, tmp_path,
                                                                             monkeypatch):
    """Real Ollama and real Open WebUI under supervisord: a chat deleted comes back from the backup; an Open WebUI that
    does not start after a change is rolled back to the one before, with the chats as they were."""
    from orchestrator.stack import native

    venv = Path(os.environ.get("ORCH_TEST_WEBUI_VENV") or Path.home() / ".cache" / "orch" / "test-open-webui-venv")
    monkeypatch.setenv(native.VENV_ENV, str(venv))
    monkeypatch.setenv(native.PREINSTALL_ENV, "torch==2.13.0")
    shutil.copytree(tiny_build, isolated_home / "data" / "orch" / "builds" / "tiny")  # orch up registers what was built
    stack, port = tmp_path / "stack", free_port()
    up = ["up", "--runtime", "native", "--offline", "--bind", "127.0.0.1", "--port", str(port), "--ollama-port", str(free_port()),
          "--dir", str(stack), "--wait", "300"]
    url = f"http://127.0.0.1:{port}"
    try:
        orch(*up, timeout=1400)
        assert json.loads((stack / RELEASE_RECORD).read_text())["release"] == f"open-webui=={WEBUI_VERSION}"
        webui = WebUI(url, stack)
        webui.new_chat("北京的天气")
        lost = webui.new_chat("a chat deleted after the backup")
        archive = Path(orch("backup", "--dir", str(stack)).stdout.split(" to ", 1)[1].split(" (", 1)[0])
        webui.delete(lost)
        assert webui.chats() == ["北京的天气"]
        refused = orch("restore", str(archive), "--dir", str(stack), check=False)
        assert refused.returncode == 1 and "is running: stop it first with orch down" in refused.stderr

        orch("down", "--dir", str(stack))
        orch("restore", str(archive), "--dir", str(stack))
        orch(*up, timeout=600)
        assert WebUI(url, stack).chats() == ["a chat deleted after the backup", "北京的天气"]

        monkeypatch.setenv(native.VENV_ENV, str(broken_webui(tmp_path / "broken-venv")))
        failed = orch(*up, timeout=1400, check=False)
        lines = failed.stderr.strip().splitlines()
        assert failed.returncode == 1, failed.stdout + failed.stderr
        assert lines[-1].startswith(f"error: Open WebUI open-webui=={WEBUI_VERSION} did not become healthy") and \
            "rolled back to" in lines[-1] and "the data as it was before" in lines[-1], lines[-1]
        taken = sorted((stack / "backups").glob("*before-upgrade.tar.gz"))
        assert len(taken) == 1, "a backup was taken before the change"
        assert str(venv / "bin" / "open-webui") in (stack / "supervisord.conf").read_text(), "the old Open WebUI runs again"
        assert WebUI(url, stack).chats() == ["a chat deleted after the backup", "北京的天气"]
        assert json.loads((stack / RELEASE_RECORD).read_text())["venv"] == str(venv)
    finally:
        orch("down", "--dir", str(stack), check=False)


OLDER = "0.12.3"  # the release before the pinned one: the upgrade a user of orch gets when orch moves its pin


@pytest.mark.timeout(2400)
def test_an_upgrade_between_two_real_releases_keeps_the_chats_even_when_orch_is_killed_during_it(
        real_ollama_on_path, tiny_build, isolated_home, webui_env, tmp_path, monkeypatch):
    """Open WebUI 0.12.3, then orch up with the pinned 0.12.4: a backup first, the chats survive the migration, and a
    kill -9 of orch in the middle of the upgrade is followed by an orch up that converges."""
    import signal
    import subprocess
    import time

    from orchestrator.stack import native
    from support import ORCH

    older_venv = webui_env.with_name(f"{webui_env.name}-{OLDER}")  # cached beside the pinned one
    monkeypatch.setenv(native.VERSION_ENV, OLDER)
    monkeypatch.setenv(native.VENV_ENV, str(older_venv))
    shutil.copytree(tiny_build, isolated_home / "data" / "orch" / "builds" / "tiny")
    stack, port = tmp_path / "stack", free_port()
    up = ["up", "--runtime", "native", "--offline", "--bind", "127.0.0.1", "--port", str(port), "--ollama-port", str(free_port()),
          "--dir", str(stack), "--wait", "300"]
    url = f"http://127.0.0.1:{port}"

    def version() -> str:
        return httpx.get(f"{url}/api/version", timeout=30).json()["version"]

    try:
        orch(*up, timeout=2000)
        assert version() == OLDER and json.loads((stack / RELEASE_RECORD).read_text())["release"] == f"open-webui=={OLDER}"
        webui = WebUI(url, stack)
        for title in ("升级前的对话", "a chat from before the upgrade"):
            webui.new_chat(title)
        before = webui.chats()

        monkeypatch.delenv(native.VERSION_ENV)
        monkeypatch.setenv(native.VENV_ENV, str(webui_env))
        upgrading = subprocess.Popen([str(ORCH), *up], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 600
            while not list((stack / "backups").glob("*-before-upgrade.tar.gz")):  # the backup is complete once it has its name
                assert upgrading.poll() is None, upgrading.communicate()
                assert time.monotonic() < deadline, "no backup before the upgrade"
                time.sleep(0.1)
            upgrading.send_signal(signal.SIGKILL)  # orch dies mid-upgrade: supervisord and the services go on
        finally:
            upgrading.communicate()
        assert upgrading.returncode == -signal.SIGKILL
        assert json.loads((stack / RELEASE_RECORD).read_text())["release"] == f"open-webui=={OLDER}", "killed before it finished"

        again = orch(*up, timeout=1400)  # converges: the new release runs, and nothing was lost
        assert "Open WebUI changes (open-webui==0.12.3 -> open-webui==" in again.stderr
        assert version() == WEBUI_VERSION
        assert json.loads((stack / RELEASE_RECORD).read_text())["release"] == f"open-webui=={WEBUI_VERSION}"
        assert WebUI(url, stack).chats() == before
        taken = sorted((stack / "backups").glob("*-before-upgrade.tar.gz"))
        with tarfile.open(taken[0]) as tar:
            manifest = json.loads(tar.extractfile("manifest.json").read())
        assert manifest["open_webui"] == f"open-webui=={OLDER}", "the first backup holds the data as the old release left it"
        assert not list(stack.glob(".backup-*")) and not list((stack / "backups").glob(".backup-*")), "nothing half-written"
    finally:
        orch("down", "--dir", str(stack), check=False)
