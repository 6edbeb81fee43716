"""`orch up --runtime native` for real: services under supervisord, Open WebUI from PyPI driven by headless Chromium,
and services that come back after kill -9.

No Ollama binary runs here. The double (tests/ollama_double.py, llama.cpp generating with the tiny model) stands
in for Ollama: through --ollama-url, or as the `ollama` on PATH that supervisord runs (tests/ollama_cli_double.py,
whose `serve` starts the double). Open WebUI's virtualenv is cached between runs under
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

import pytest

from orchestrator.stack import native
from orchestrator.stack.runtime import StackRecord
from support import ORCH, cli, orch, read_json_lines

MODEL = "tiny:q4_K_M"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


@pytest.fixture
def webui_env(monkeypatch):
    venv = Path(os.environ.get("ORCH_TEST_WEBUI_VENV") or Path.home() / ".cache" / "orch" / "test-open-webui-venv")
    monkeypatch.setenv(native.VENV_ENV, str(venv))
    monkeypatch.setenv(native.PREINSTALL_ENV, "torch==2.13.0")  # the CPU wheel: no multi-gigabyte CUDA build
    return venv


@pytest.mark.timeout(1500)
def test_browser_chat_through_native_open_webui(ollama_double, tiny_build, webui_env, tmp_path, artifacts_dir):
    assert CHROMIUM, "headless Chromium is needed: apt-get install chromium (scripts/test does it)"
    from playwright.sync_api import sync_playwright

    double = ollama_double()
    orch("register", str(tiny_build), "--host", double.url, "--name", MODEL, "--no-check")
    stack, port = tmp_path / "stack", free_port()
    def up_args(model: str) -> list[str]:
        return ["up", "--runtime", "native", "--ollama-url", double.url, "--offline", "--bind", "127.0.0.1", "--port", str(port),
                "--model", model, "--dir", str(stack), "--wait", "300"]

    up = up_args(MODEL)
    first = orch(*up, timeout=1400, check=False)
    pids, monitor = {}, None
    try:  # from here on, whatever fails, orch down runs: no Open WebUI is left behind
        assert first.returncode == 0, first.stderr
        env = dict(line.split("=", 1) for line in (stack / ".env").read_text().splitlines() if "=" in line and not line.startswith("#"))
        assert f"Admin password (shown once, kept in {stack / '.env'}): {env['WEBUI_ADMIN_PASSWORD']}" in first.stdout
        assert oct((stack / ".env").stat().st_mode & 0o777) == "0o600"
        pids["open-webui"] = pid_of(stack, "open-webui")
        pids["supervisord"] = native.Supervisor(stack).pid()
        assert oct((stack / "supervisord.conf").stat().st_mode & 0o777) == "0o600"
        assert env["WEBUI_SECRET_KEY"] not in (stack / "supervisord.conf").read_text(), "secrets stay in .env"
        webui_env = environ_of(pids["open-webui"])
        assert webui_env.get("WEBUI_SECRET_KEY") == env["WEBUI_SECRET_KEY"], "Open WebUI, and only it, gets the secrets"
        assert not {"WEBUI_SECRET_KEY", "WEBUI_ADMIN_PASSWORD"} & set(environ_of(pids["supervisord"])), "nor does supervisord"
        again = orch(*up, timeout=600)  # idempotent: nothing restarted, no password shown again
        assert "Admin password" not in again.stdout
        assert pid_of(stack, "open-webui") == pids["open-webui"]
        assert re.search(r"open-webui: running, pid \d+, uptime", orch("status", "--dir", str(stack)).stdout)
        assert "== open-webui ==" in orch("logs", "--dir", str(stack)).stdout  # no ollama was started: only its log is shown

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(f"http://127.0.0.1:{port}/auth", wait_until="networkidle")
            page.fill("input[name=email]", env["WEBUI_ADMIN_EMAIL"])
            page.fill("input[name=password]", env["WEBUI_ADMIN_PASSWORD"])
            page.click("button:has-text('Sign in')")
            page.wait_for_selector("#chat-input", timeout=60_000)
            notes = page.get_by_role("button", name=re.compile("Okay, Let's Go", re.I))
            if notes.count():
                notes.first.click()
            assert page.locator("#model-selector-model-button").inner_text().strip() == MODEL
            before = double.stats()["streamed"]
            page.locator("#chat-input").click()
            page.keyboard.type("你好，请介绍一下你自己。")
            page.keyboard.press("Enter")
            reply = page.locator("#response-content-container").first
            page.wait_for_function("() => (document.querySelector('#response-content-container')?.innerText || '').trim().length > 0",
                                   timeout=120_000)
            settled, last = 0, None
            for _ in range(120):  # the reply streams in; screenshot it once it has stopped growing
                page.wait_for_timeout(500)
                now = reply.inner_text()
                settled, last = (settled + 1 if now == last else 0), now
                if settled >= 4:
                    break
            page.screenshot(path=str(artifacts_dir / "open-webui-chat.png"))
            text = reply.inner_text().strip()
            browser.close()
        assert text, "no reply reached the page"
        assert double.stats()["streamed"] > before, "the reply did not come from the double's streamed /api/chat"

        orch("register", str(tiny_build), "--host", double.url, "--name", "tiny:other", "--no-check")
        changed = orch(*up_args("tiny:other"), timeout=600)
        assert "DEFAULT_MODELS changed, but Open WebUI reads it only on its first start" in changed.stdout
        assert pid_of(stack, "open-webui") != pids["open-webui"], "changed settings: restarted"

        # kill -9: supervisord starts it again at once; it serves again once it has booted, and the monitor sees both
        wait_for(lambda: answers(f"http://127.0.0.1:{port}/health"), 240)
        monitor = subprocess.Popen([str(ORCH), "health", "--host", double.url, "--model", MODEL, "--webui", f"http://127.0.0.1:{port}",
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
    finally:
        if monitor is not None:
            monitor.send_signal(signal.SIGINT)
            monitor.communicate(timeout=30)
        down = orch("down", "--dir", str(stack), check=False)
    assert down.returncode == 0 and "open-webui" in down.stdout and "supervisord" in down.stdout
    assert not listening(port), f"port {port} still answers after orch down"
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
        if monitor is not None:
            monitor.send_signal(signal.SIGINT)
            monitor.communicate(timeout=30)
        down = orch("down", "--dir", str(stack), check=False)
    assert down.returncode == 0 and "ollama" in down.stdout
    assert not listening(port), f"port {port} still answers after orch down"
    for name, pid in pids.items():
        assert gone(pid), f"{name} (pid {pid}) still runs after orch down"

