"""The native stack starts Ollama through orchestrator.stack.stale_group: a llama-server the previous, killed `ollama serve`
left in its process group is ended first, and nothing outside that group is touched."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

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
    record.write_text(f"{server.pid}\n")
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
        assert record.read_text().strip() == restarted.stdout.strip(), "the new run's group is recorded (exec kept the pid)"
    finally:
        for pid in (child, bystander.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        bystander.wait()


def test_usage_is_one_line_and_exit_2():
    proc = subprocess.run([sys.executable, "-m", "orchestrator.stack.stale_group", "only-a-file"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("python -m orchestrator.stack.stale_group GROUP_FILE")
