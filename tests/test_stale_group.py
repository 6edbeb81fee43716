"""The native stack starts Ollama through orchestrator.stack.stale_group: a llama-server the previous, killed `ollama serve`
left in its process group is ended first, and nothing outside that group is touched."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

from support import wait_until


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_killed_servers_engine_is_ended_and_another_groups_is_not(tmp_path):
    engine = tmp_path / "llama-server"  # a stand-in with the engine's process name
    shutil.copy(shutil.which("sleep"), engine)
    # `ollama serve` as supervisord starts it: a group leader with a llama-server child
    server = subprocess.Popen(["sh", "-c", f"{engine} 300 & echo $!; exec sleep 300"], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    child = int(server.stdout.readline())
    bystander = subprocess.Popen([str(engine), "300"], start_new_session=True)  # another stack's engine
    record = tmp_path / "run" / "ollama.pgid"
    record.parent.mkdir()
    record.write_text(json.dumps(recorded(server.pid)))  # as the killed server's start wrote it
    try:
        server.kill()  # kill -9 of ollama serve: its llama-server lives on
        server.wait()
        assert not gone(child)
        restarted = subprocess.run([sys.executable, "-m", "orchestrator.stack.stale_group", str(record), "llama-server", "--",
                                    sys.executable, "-c", "import os; print(os.getpgrp())"],
                                   capture_output=True, text=True, start_new_session=True, check=True)
        wait_until(lambda: gone(child), timeout=10, what="the old llama-server ended")
        assert f"killing {child}, left running by the previous" in restarted.stderr
        assert bystander.poll() is None, "a llama-server of another process group is left alone"
        assert json.loads(record.read_text())["pgid"] == int(restarted.stdout), "the new run's group is recorded (exec kept the pid)"
    finally:
        for pid in (child, bystander.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        bystander.wait()


def recorded(leader: int, **changes) -> dict:
    """The record a start through stale_group leaves for a group led by `leader`."""
    p = psutil.Process(leader)
    return {"pgid": leader, "start": p.create_time(), "uid": p.uids().real, "boot": psutil.boot_time()} | changes


@pytest.fixture
def stand_in():
    """A program with the engine's process name, in a directory any user may run it from (pytest's are root's alone)."""
    folder = Path(tempfile.mkdtemp(prefix="orch-stale-group-"))
    folder.chmod(0o755)
    engine = folder / "llama-server"
    shutil.copy(shutil.which("sleep"), engine)
    yield engine
    shutil.rmtree(folder)


def restart(record: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.stack.stale_group", str(record), "llama-server", "--", "true"],
                          capture_output=True, text=True, start_new_session=True, check=True)


def forged_records(victim: subprocess.Popen) -> dict[str, dict]:
    return {
        "naming a stranger's group": recorded(victim.pid, uid=os.getuid()),
        "from before the last boot": recorded(victim.pid, uid=os.getuid(), boot=psutil.boot_time() - 3600,
                                              start=psutil.boot_time() - 3000),
        "whose leader started after the process": recorded(victim.pid, uid=os.getuid(), start=psutil.Process(victim.pid).create_time() + 5),
        "in an older orch's format": victim.pid,
    }


@pytest.mark.parametrize("kind", ["naming a stranger's group", "from before the last boot", "whose leader started after the process",
                                  "in an older orch's format"])
def test_a_forged_record_never_kills_a_process_orch_did_not_start(tmp_path, stand_in, kind):
    """A llama-server that another user runs (or one that was there before the group's leader): the record names its
    group, and it survives."""
    if kind == "naming a stranger's group" and os.getuid() != 0:
        pytest.skip("a process of another user needs root to make (CI runs as root)")
    engine = stand_in
    nobody = pwd.getpwnam("nobody")
    user = nobody.pw_uid if kind == "naming a stranger's group" else os.getuid()
    victim = subprocess.Popen([str(engine), "300"], start_new_session=True, user=user)
    record = tmp_path / "ollama.pgid"
    record.write_text(json.dumps(forged_records(victim)[kind]))
    try:
        done = restart(record)
        assert "killing" not in done.stderr and victim.poll() is None, done.stderr
    finally:
        victim.kill()
        victim.wait()


def test_usage_is_one_line_and_exit_2():
    proc = subprocess.run([sys.executable, "-m", "orchestrator.stack.stale_group", "only-a-file"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("python -m orchestrator.stack.stale_group GROUP_FILE")
