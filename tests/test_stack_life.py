"""One owner for a stack's life: a failed or interrupted first start can still be stopped, and the stack remembers how it
was started, so every later command finds it where it runs.

Native runtime under supervisord. The failed start runs an `ollama` that never answers (a shell script: the real
server cannot be made to hang at start); the remembered ports run the real Ollama (built from source by scripts/test).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import psutil
import pytest

from orchestrator.stack import native
from orchestrator.stack.runtime import StackRecord
from support import ORCH, cli, free_port, orch, wait_until


def processes_under(stack: Path) -> list[psutil.Process]:
    """Every process whose command line names the stack directory (supervisord, and what it started) or its stand-in."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(str(stack) in a for a in p.info["cmdline"] or []):
                found.append(p)
        except psutil.Error:
            continue
    return found


def mute_ollama(bindir: Path, stack: Path) -> None:
    """An `ollama` that starts and never answers: what a first start meets when the server hangs."""
    bindir.mkdir(parents=True)
    (bindir / "ollama").write_text(f"#!/bin/sh\nexec python3 -c 'import time; time.sleep(600)' {stack}\n")  # named for processes_under
    (bindir / "ollama").chmod(0o755)


def test_a_failed_or_interrupted_first_start_is_still_a_stack_that_orch_down_stops(tmp_path, monkeypatch):
    stack = tmp_path / "stack"
    mute_ollama(tmp_path / "bin", stack)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    up = ["up", "--runtime", "native", "--no-webui", "--ollama-port", str(free_port()), "--dir", str(stack)]
    try:
        failed = orch(*up, "--wait", "3", check=False)
        assert failed.returncode == 1 and "did not answer" in failed.stderr, failed.stderr
        assert StackRecord.load(stack).runtime == "native", "the record was written before anything started"
        status = orch("status", "--dir", str(stack), check=False)
        assert status.returncode == 1 and "ollama:" in status.stdout and "not healthy" in status.stdout, status.stdout + status.stderr
        assert "== ollama ==" in orch("logs", "--dir", str(stack)).stdout
        assert processes_under(stack), "supervisord and the mute ollama run"
        orch("down", "--dir", str(stack))
        wait_until(lambda: not processes_under(stack), timeout=30, what="every process of the stack gone")

        # Ctrl-C while orch up waits: it says what keeps running and how to stop it
        waiting = subprocess.Popen([str(ORCH), *up, "--wait", "120"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env=os.environ.copy())
        wait_until(lambda: native.Supervisor(stack).processes().get("ollama", {}).get("statename") == "RUNNING", timeout=60,
                   what="ollama started under supervisord")
        waiting.send_signal(signal.SIGINT)
        out, err = waiting.communicate(timeout=60)
        assert waiting.returncode == 130, out + err
        assert "interrupted: what orch up started keeps running" in err and f"orch down --dir {stack} stops it" in err, err
        orch("down", "--dir", str(stack))
        wait_until(lambda: not processes_under(stack), timeout=30, what="every process of the stack gone")
    finally:
        orch("down", "--dir", str(stack), check=False)


def test_the_stack_remembers_its_ports_and_every_command_finds_it_there(real_ollama_on_path, tiny_build, isolated_home,
                                                                       monkeypatch):
    """orch up on non-default ports, then bare orch health, status and up: the stack's ports, not 11434. The native
    Ollama, a private stack's, calls no outside host."""
    monkeypatch.delenv("OLLAMA_HOST")
    shutil.copytree(tiny_build, isolated_home / "data" / "orch" / "builds" / "tiny")  # orch up registers what was built
    stack = isolated_home / "data" / "orch" / "stack"  # the default stack directory: no --dir anywhere
    port = free_port()
    try:
        orch("up", "--runtime", "native", "--no-webui", "--ollama-port", str(port), "--bind", "127.0.0.1", "--wait", "120",
             timeout=300)
        record = json.loads((stack / "stack.json").read_text())
        assert (record["ollama_port"], record["bind"], record["webui"]) == (port, "127.0.0.1", False)

        health = orch("health", "--json")  # the model answers, through the stack's port
        assert json.loads(health.stdout)["host"] == f"http://127.0.0.1:{port}", health.stdout
        status = orch("status")
        assert f"ollama: http://127.0.0.1:{port}" in status.stdout and "healthy" in status.stdout

        again = orch("up", "--wait", "120", timeout=300)  # bare: the same stack, the same port, nothing changed
        assert "changes the stack" not in again.stderr and f"127.0.0.1:{port}" in (stack / "supervisord.conf").read_text()
        moved = free_port()
        changed = orch("up", "--ollama-port", str(moved), "--wait", "120", timeout=300)
        assert f"changes the stack: ollama-port {port} -> {moved}" in changed.stderr, changed.stderr
        assert json.loads(orch("status", "--json").stdout)["ollama"] == f"http://127.0.0.1:{moved}"

        log = (stack / "logs" / "ollama.log").read_text()
        calls = [line for line in log.splitlines() if "ollama.com" in line and 'msg="server config"' not in line]
        assert calls == [] and "Ollama cloud disabled: true" in log, calls[:3]  # the config dump names OLLAMA_REMOTES' default
    finally:
        cli("down", check=False)


OLDER_RECORDS = [  # what orch before this release wrote, and where a bare orch up then runs the stack
    ({"runtime": "native", "ollama_url": "http://127.0.0.1:11500", "webui_url": "http://127.0.0.1:3300"},
     {"port": 3300, "ollama_port": 11500, "bind": "0.0.0.0", "ollama_url": None, "webui": True}),
    ({"runtime": "docker", "ollama_url": "http://gpu-box:11434", "webui_url": "http://10.0.0.5:3000"},
     {"port": 3000, "ollama_port": 11434, "bind": "10.0.0.5", "ollama_url": "http://gpu-box:11434", "webui": True}),
    ({"runtime": "native", "ollama_url": "http://127.0.0.1:11600", "webui_url": None},
     {"port": 3000, "ollama_port": 11600, "bind": "0.0.0.0", "ollama_url": None, "webui": False}),
]


@pytest.mark.parametrize("old, runs", OLDER_RECORDS)
def test_a_stack_started_by_an_older_orch_starts_again_where_it_ran(tmp_path, old, runs):
    from orchestrator.stack import lifecycle

    (tmp_path / "stack.json").write_text(json.dumps(old))
    plan, changes = lifecycle.planned(tmp_path, {})
    assert {k: getattr(plan, k) for k in runs} == runs and changes == []
    plan, changes = lifecycle.planned(tmp_path, {"port": 3400, "model": "tiny:q4_K_M"}, webui=True)
    assert plan.port == 3400 and changes[:2] == [f"port {runs['port']} -> 3400", "model none -> tiny:q4_K_M"]


@pytest.mark.parametrize("asked, bind, warned", [
    ({}, "127.0.0.1", False),                       # keys on: Open WebUI stays on this machine unless asked
    ({"bind": "0.0.0.0"}, "0.0.0.0", True),          # asked wider: said that keys cross in plain HTTP
    ({"bind": "127.0.0.1"}, "127.0.0.1", False),
])
def test_keyed_access_keeps_open_webui_on_loopback_unless_asked(tmp_path, asked, bind, warned):
    from orchestrator.stack import lifecycle

    plan, _ = lifecycle.planned(tmp_path / "new-stack", asked, api=True)
    assert plan.bind == bind
    assert any("plain HTTP" in w for w in plan.warnings("native")) == warned
