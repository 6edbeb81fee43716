"""`orch up --runtime native` for real: Open WebUI from PyPI against the Ollama double, driven by headless Chromium.

The double (tests/ollama_double.py, llama.cpp generating with the tiny model) stands in for Ollama through
--ollama-url; no Ollama binary runs here. Open WebUI's virtualenv is cached between runs under
~/.cache/orch/test-open-webui-venv, with torch==2.13.0 (the CPU wheel) installed into it first.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from pathlib import Path

import pytest

from orchestrator.stack import native
from orchestrator.stack.runtime import StackRecord
from support import orch

MODEL = "tiny:q4_K_M"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    pids = {}
    try:  # from here on, whatever fails, orch down runs: no Open WebUI is left behind
        assert first.returncode == 0, first.stderr
        env = dict(line.split("=", 1) for line in (stack / ".env").read_text().splitlines() if "=" in line and not line.startswith("#"))
        assert f"Admin password (shown once, kept in {stack / '.env'}): {env['WEBUI_ADMIN_PASSWORD']}" in first.stdout
        assert oct((stack / ".env").stat().st_mode & 0o777) == "0o600"
        pids["open-webui"] = json.loads((stack / "run" / "open-webui.pid").read_text())["pid"]
        again = orch(*up, timeout=600)  # idempotent: nothing restarted, no password shown again
        assert "Admin password" not in again.stdout
        assert json.loads((stack / "run" / "open-webui.pid").read_text())["pid"] == pids["open-webui"]
        assert re.search(r"open-webui: running, pid \d+", orch("status", "--dir", str(stack)).stdout)
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
        assert json.loads((stack / "run" / "open-webui.pid").read_text())["pid"] != pids["open-webui"], "changed settings: restarted"
        pids["open-webui"] = json.loads((stack / "run" / "open-webui.pid").read_text())["pid"]
    finally:
        down = orch("down", "--dir", str(stack), check=False)
    assert down.returncode == 0 and "open-webui" in down.stdout
    assert not list((stack / "run").glob("*.pid"))
    assert not listening(port), f"port {port} still answers after orch down"
    assert not Path(f"/proc/{pids['open-webui']}").exists() or "zombie" in Path(f"/proc/{pids['open-webui']}/status").read_text().lower()


def test_down_leaves_alone_a_process_that_reused_a_recorded_pid(tmp_path):
    """A pid file whose pid now names another program (start time differs) is stale: nothing is signalled."""
    import subprocess
    import sys

    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run = tmp_path / "stack" / "run"
        run.mkdir(parents=True)
        StackRecord("native", "http://127.0.0.1:9", None).save(tmp_path / "stack")
        (run / "open-webui.pid").write_text(json.dumps({"pid": bystander.pid, "start": "1", "command": ["open-webui"]}))
        proc = orch("down", "--dir", str(tmp_path / "stack"))
        assert "nothing" in proc.stdout and bystander.poll() is None
        assert not (run / "open-webui.pid").exists()
    finally:
        bystander.kill()
        bystander.wait()
