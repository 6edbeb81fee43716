"""`orch up --runtime native` for real: services under supervisord, Open WebUI from PyPI driven by headless Chromium,
and services that come back after kill -9.

The browser test runs the real Ollama (built from source by scripts/test) as the `ollama` on PATH that supervisord
starts. The test of a held-back restart runs the double instead (tests/ollama_cli_double.py, whose `serve` starts
tests/ollama_double.py): the real server cannot be made to stay down for a while. Open WebUI's virtualenv is cached between runs under
~/.cache/orch/test-open-webui-venv, with torch==2.13.0 (the CPU wheel) installed into it first.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from orchestrator.builder.catalog import TINY_IS_A_DEMO
from orchestrator.stack import native
from orchestrator.stack.runtime import StackRecord
from orchestrator.webui.client import Admin
from support import ORCH, answered, browser_chat, cli, free_port, orch, read_json_lines



def pid_of(stack: Path, name: str) -> int | None:
    """The pid supervisord reports for a running (or starting) program."""
    p = native.Supervisor(stack).processes().get(name)
    return p["pid"] if p and p["statename"] in ("RUNNING", "STARTING") and p["pid"] else None


def gone(pid: int | None) -> bool:
    return pid is None or not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()


def environ_of(pid: int) -> dict:
    """A running process's environment, as /proc shows it."""
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


def answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def wait_for(predicate, timeout: float) -> float:
    """Seconds until `predicate()` held (it is asserted to hold within `timeout`)."""
    t = time.monotonic()
    while not predicate():
        assert time.monotonic() - t < timeout, f"not within {timeout} s"
        time.sleep(0.1)
    return time.monotonic() - t


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def quiet_background_generation(webui: str, email: str, password: str) -> None:
    """Turn off Open WebUI's title, tag and follow-up generations, as an admin would on a slow box.

    Each is a full generation queued on Ollama's one slot after every chat; this
    test checks chats and restarts, and a probe stuck behind them would time out.
    """
    import httpx

    token = httpx.post(f"{webui}/api/v1/auths/signin", json={"email": email, "password": password}, timeout=30).json()["token"]
    auth = {"Authorization": f"Bearer {token}"}
    config = httpx.get(f"{webui}/api/v1/tasks/config", headers=auth, timeout=30).json()
    config |= {"ENABLE_TITLE_GENERATION": False, "ENABLE_TAGS_GENERATION": False, "ENABLE_FOLLOW_UP_GENERATION": False,
               "ENABLE_AUTOCOMPLETE_GENERATION": False}
    r = httpx.post(f"{webui}/api/v1/tasks/config/update", headers=auth, json=config, timeout=30)
    assert r.status_code == 200, r.text
    assert httpx.get(f"{webui}/api/v1/tasks/config", headers=auth, timeout=30).json()["ENABLE_TITLE_GENERATION"] is False


def stop_monitor(monitor: subprocess.Popen | None) -> bool:
    """Ctrl-C for the monitor, and kill -9 if it does not stop (False then): whatever happens, orch down runs after it."""
    if monitor is None:
        return True
    monitor.send_signal(signal.SIGINT)
    try:
        monitor.communicate(timeout=30)
        return True
    except subprocess.TimeoutExpired:
        monitor.kill()
        monitor.communicate()
        return False


def chats_answered(stack: Path) -> int:
    """How many /api/chat requests the real Ollama has answered with a 2xx, from its own request log."""
    return answered(stack / "logs" / "ollama.log", "POST", "/api/chat")


@pytest.mark.timeout(1500)
def test_browser_chat_through_native_open_webui_and_the_real_ollama(real_ollama_on_path, tiny_build, webui_env, tmp_path,
                                                                    isolated_home, artifacts_dir):
    """Real Ollama (built from source, started by orch up under supervisord) and real Open WebUI, driven in Chromium."""
    shutil.copytree(tiny_build, isolated_home / "data" / "orch" / "builds" / "tiny")  # orch up registers what was built
    model = json.loads((tiny_build / "build.json").read_text())["artifacts"][0]["ollama_name"]
    stack, port, ollama_port = tmp_path / "stack", free_port(), free_port()
    ollama_url = f"http://127.0.0.1:{ollama_port}"

    def up_args(default: str) -> list[str]:
        return ["up", "--runtime", "native", "--offline", "--bind", "127.0.0.1", "--port", str(port), "--ollama-port",
                str(ollama_port), "--model", default, "--dir", str(stack), "--wait", "300"]

    up = up_args(model)
    first = orch(*up, timeout=1400, check=False)
    pids, monitor = {}, None
    try:  # from here on, whatever fails, orch down runs: nothing is left behind
        assert first.returncode == 0, first.stdout + first.stderr
        assert f"registered {model}" in first.stdout, first.stdout
        env = dict(line.split("=", 1) for line in (stack / ".env").read_text().splitlines() if "=" in line and not line.startswith("#"))
        assert f"Admin password (shown once, kept in {stack / '.env'}): {env['WEBUI_ADMIN_PASSWORD']}" in first.stdout
        assert oct((stack / ".env").stat().st_mode & 0o777) == "0o600"
        pids["open-webui"], pids["ollama"] = pid_of(stack, "open-webui"), pid_of(stack, "ollama")
        pids["supervisord"] = native.Supervisor(stack).pid()
        assert Path(f"/proc/{pids['ollama']}/exe").resolve() == real_ollama_on_path.resolve(), "supervisord runs the real Ollama"
        assert oct((stack / "supervisord.conf").stat().st_mode & 0o777) == "0o600"
        assert env["WEBUI_SECRET_KEY"] not in (stack / "supervisord.conf").read_text(), "secrets stay in .env"
        webui_env = environ_of(pids["open-webui"])
        assert webui_env.get("WEBUI_SECRET_KEY") == env["WEBUI_SECRET_KEY"], "Open WebUI, and only it, gets the secrets"
        for other in ("supervisord", "ollama"):
            assert not {"WEBUI_SECRET_KEY", "WEBUI_ADMIN_PASSWORD"} & set(environ_of(pids[other])), f"nor does {other}"
        again = json.loads(orch(*up, "--json", timeout=600).stdout)  # idempotent: nothing restarted, no password shown again
        assert again["admin"] == {"email": env["WEBUI_ADMIN_EMAIL"], "password": None} and again["registered"] == []
        assert again["urls"]["chat"] == f"http://127.0.0.1:{port}" and again["health"]["ok"] is True
        assert (pid_of(stack, "open-webui"), pid_of(stack, "ollama")) == (pids["open-webui"], pids["ollama"])
        status = orch("status", "--dir", str(stack)).stdout
        assert re.search(r"open-webui: running, pid \d+, uptime", status) and re.search(r"ollama: running, pid \d+", status)
        status = json.loads(orch("status", "--dir", str(stack), "--json").stdout)
        assert {s["name"]: s["running"] for s in status["services"]} == {"ollama": True, "open-webui": True}
        assert status["runtime"] == "native" and status["ollama"] == ollama_url and status["ollama_error"] is None
        logs = orch("logs", "--dir", str(stack)).stdout
        assert "== ollama ==" in logs and "== open-webui ==" in logs

        webui = f"http://127.0.0.1:{port}"
        with Admin(webui, env["WEBUI_ADMIN_EMAIL"], env["WEBUI_ADMIN_PASSWORD"]) as admin:  # the model list says tiny is a demo
            offered = {m["id"]: m for m in admin.models()}
            assert TINY_IS_A_DEMO in offered[model]["info"]["meta"]["description"], offered[model]
            # an entry without a description, as granting a group made one before orch described demos, is given one,
            # and the group still may read the model; a description already there, as one the admin wrote, is kept
            readers = admin.group_id("readers", description="a group of the admin's", features={})
            admin.call("POST", "/api/v1/models/model/delete", {"id": model})
            admin.grant_read(model, model, readers)
            assert not admin.call("GET", "/api/v1/models/model", id=model)["meta"].get("description")
            admin.describe(model, "a demo")
            admin.describe(model, "not this")
            entry = admin.call("GET", "/api/v1/models/model", id=model)
        assert entry["meta"]["description"] == "a demo", entry
        assert readers in {g["principal_id"] for g in entry["access_grants"]}, entry["access_grants"]
        quiet_background_generation(webui, env["WEBUI_ADMIN_EMAIL"], env["WEBUI_ADMIN_PASSWORD"])
        before = chats_answered(stack)
        text = browser_chat(webui, env["WEBUI_ADMIN_EMAIL"], env["WEBUI_ADMIN_PASSWORD"], "你好，请介绍一下你自己。",
                            artifacts_dir / "open-webui-chat.png", model=model,
                            # the reply is complete once Ollama logs the request as answered
                            finished=lambda: wait_for(lambda: chats_answered(stack) > before, 300))
        refused = answered(stack / "logs" / "ollama.log", "POST", "/api/chat", status="4..")
        assert refused == 0, f"Ollama refused {refused} of Open WebUI's chats: {text}"

        orch("register", str(tiny_build), "--host", ollama_url, "--name", "tiny:other", "--no-check")
        changed = orch(*up_args("tiny:other"), timeout=600)
        assert "DEFAULT_MODELS changed, but Open WebUI reads it only on its first start" in changed.stdout
        assert pid_of(stack, "open-webui") != pids["open-webui"], "changed settings: restarted"
        assert pid_of(stack, "ollama") == pids["ollama"], "Ollama's settings did not change: it kept running"

        # kill -9: supervisord starts it again at once; it serves again once it has booted, and the monitor sees both
        wait_for(lambda: answers(f"{webui}/health"), 240)
        monitor = subprocess.Popen([str(ORCH), "health", "--host", ollama_url, "--model", model, "--webui", webui,
                                    "--watch", "--interval", "1", "--failures", "1", "--timeout", "20", "--json"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        read_json_lines(monitor, lambda r: r.get("ok") is True)
        pids["open-webui"] = pid_of(stack, "open-webui")
        os.kill(pids["open-webui"], signal.SIGKILL)
        wait_for(lambda: (pid_of(stack, "open-webui") or pids["open-webui"]) != pids["open-webui"], 30)  # restarted by supervisord
        pids["open-webui"] = pid_of(stack, "open-webui")
        failed = read_json_lines(monitor, lambda r: r.get("kind") == "failed")[-1]
        assert failed["event"].startswith("failed: webui"), failed
        read_json_lines(monitor, lambda r: r.get("kind") == "recovered", timeout=240)

        # and the real Ollama: killed, it is started again with its models, and answers; its llama-server is not left behind
        engines = [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "llama-server" and os.getpgid(p.pid) == pids["ollama"]]
        assert engines, "the model runs in a llama-server in Ollama's process group"
        os.kill(pids["ollama"], signal.SIGKILL)
        wait_for(lambda: (pid_of(stack, "ollama") or pids["ollama"]) != pids["ollama"], 30)
        pids["ollama"] = pid_of(stack, "ollama")
        wait_for(lambda: answers(f"{ollama_url}/api/version"), 60)
        wait_for(lambda: all(gone(pid) for pid in engines), 30)  # ended by the restart, not left holding the model's memory
        report = json.loads(orch("health", "--host", ollama_url, "--model", model, "--json", check=False).stdout)
        assert report["ok"] is True, [c for c in report["checks"] if c["status"] != "ok"]
    finally:
        stopped = stop_monitor(monitor)
        down = orch("down", "--dir", str(stack), check=False)
    assert stopped, "orch health --watch did not stop on Ctrl-C's signal"
    assert down.returncode == 0 and "open-webui" in down.stdout and "ollama" in down.stdout and "supervisord" in down.stdout
    assert not listening(port) and not listening(ollama_port), "a port still answers after orch down"
    for name, pid in pids.items():
        assert gone(pid), f"{name} (pid {pid}) still runs after orch down"


def test_down_without_a_running_supervisor_touches_nothing(tmp_path):
    """A stack whose supervisord is gone (stale pid file and socket): orch down signals nobody, not even a process that reused the pid."""
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stack = tmp_path / "stack"
        (stack / "run").mkdir(parents=True)
        StackRecord("native", "http://127.0.0.1:9", None).save(stack)
        (stack / "run" / "supervisord.pid").write_text(f"{bystander.pid}\n")
        with socket.socket(socket.AF_UNIX) as stale:  # a socket file nobody listens on any more
            stale.bind(str(native.socket_path(stack)))
        proc = cli("down", "--dir", str(stack))
        assert "nothing" in proc.stdout and bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_a_killed_ollama_comes_back_and_the_monitor_sees_the_outage_and_the_recovery(ollama_cli, tiny_build, tmp_path,
                                                                                      isolated_home, monkeypatch):
    """The Ollama double as `ollama serve`, its restart held back until the monitor has seen the outage."""
    monkeypatch.setenv("HF_TOKEN", "hf_user_secret")  # the user's own token: ollama serve must never see it
    shutil.copytree(tiny_build, isolated_home / "data" / "orch" / "builds" / "tiny")  # orch up registers what was built
    model = json.loads((tiny_build / "build.json").read_text())["artifacts"][0]["ollama_name"]
    stack, port = tmp_path / "stack", free_port()
    up = orch("up", "--runtime", "native", "--no-webui", "--ollama-port", str(port), "--dir", str(stack), "--wait", "60", check=False)
    url = f"http://127.0.0.1:{port}"
    monitor, pids = None, {}
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "Chat:" not in up.stdout and not (stack / "open-webui-data").exists(), "--no-webui: Ollama alone"
        conf = (stack / "supervisord.conf").read_text()
        assert "[program:ollama]" in conf and "[program:open-webui]" not in conf and "autorestart=true" in conf
        assert "stdout_logfile_maxbytes=20MB" in conf and "stopasgroup=true" in conf
        assert f"registered {model}" in up.stdout
        pids["supervisord"], pids["ollama"] = native.Supervisor(stack).pid(), pid_of(stack, "ollama")
        ollama_env = environ_of(pids["ollama"])
        assert not {"HF_TOKEN", "WEBUI_SECRET_KEY", "WEBUI_ADMIN_PASSWORD"} & set(ollama_env), sorted(ollama_env)
        assert ollama_env["OLLAMA_HOST"].endswith(f":{port}") and "PATH" in ollama_env

        monitor = subprocess.Popen([str(ORCH), "health", "--host", url, "--model", model, "--watch", "--interval", "0.5",
                                    "--failures", "1", "--timeout", "20", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
        seen = read_json_lines(monitor, lambda r: r.get("ok") is True)
        hold = Path(os.environ["OLLAMA_DOUBLE_HOLD"])
        hold.touch()  # the restarted serve waits until the monitor has seen the outage, however busy the machine
        os.kill(pids["ollama"], signal.SIGKILL)
        seen += read_json_lines(monitor, lambda r: r.get("kind") == "outage", timeout=60)
        wait_for(lambda: (pid_of(stack, "ollama") or pids["ollama"]) != pids["ollama"], 30)  # supervisord restarted it
        hold.unlink()
        wait_for(lambda: answers(f"{url}/api/version"), 60)
        pids["ollama"] = pid_of(stack, "ollama")
        seen += read_json_lines(monitor, lambda r: r.get("kind") == "recovered", timeout=60)
        kinds = [r.get("kind") for r in seen if "kind" in r]
        assert kinds == ["outage", "recovered"], seen[-5:]
        wait_for(lambda: native.Supervisor(stack).processes()["ollama"]["statename"] == "RUNNING", 15)
        status = orch("status", "--dir", str(stack)).stdout
        assert re.search(r"ollama: running, pid \d+", status)
        assert "== ollama ==" in orch("logs", "ollama", "--dir", str(stack)).stdout
    finally:
        stopped = stop_monitor(monitor)
        down = orch("down", "--dir", str(stack), check=False)
    assert stopped, "orch health --watch did not stop on Ctrl-C's signal"
    assert down.returncode == 0 and "ollama" in down.stdout
    assert not listening(port), f"port {port} still answers after orch down"
    for name, pid in pids.items():
        assert gone(pid), f"{name} (pid {pid}) still runs after orch down"



SETTINGS = {  # what a service's environment may hold, as supervisord must hand it over
    "JSON, as Open WebUI's DEFAULT_MODEL_PARAMS": '{"function_calling": "legacy"}',
    "an apostrophe": "it's",
    "commas and spaces": "a,b c",
    "a percent sign": "50%",
    "a path": "/home/user/.local/share/orch/stack/open-webui-data",
}


def test_supervisord_hands_every_setting_over_unchanged(tmp_path):
    """The environment line of supervisord.conf, read by supervisord's own parser, gives back each value as written."""
    from supervisor.datatypes import dict_of_key_value_pairs
    from supervisor.options import UnhosedConfigParser, expand

    env = {f"S{i}": value for i, value in enumerate(SETTINGS.values())}
    service = native.Service("x", ["/bin/true"], env, "http://127.0.0.1:9/")
    parser = UnhosedConfigParser()
    parser.read_string(native.config(tmp_path, [service], tmp_path / "s.sock"))
    line = parser.get("program:x", "environment")
    assert dict_of_key_value_pairs(expand(line, {"ENV_HOME": "/"}, "environment")) == env


@pytest.mark.parametrize("value", ["both \" and '", '"starts with a quote', "two\nlines"])
def test_a_setting_supervisord_cannot_carry_is_refused_in_one_line(tmp_path, value):
    from orchestrator.errors import OrchError

    service = native.Service("x", ["/bin/true"], {"S": value}, "http://127.0.0.1:9/")
    with pytest.raises(OrchError, match="cannot be passed through supervisord"):
        native.config(tmp_path, [service], tmp_path / "s.sock")
