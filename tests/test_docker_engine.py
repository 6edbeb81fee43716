"""`orch up --runtime docker` on a real engine: Debian's dockerd (tests/engines.py), compose v2, and the images
`orch images build` made here with no registry. Every port is published on 127.0.0.1, and test traffic goes only there.

Everything here talks to the real engine, the real Ollama (0.34.1, in its image) and the real Open WebUI.
tests/docker_double.py stays for the one fault a real release cannot be made to show on demand (a migration that
damages the database), in test_backup.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from support import browser_chat, free_port, orch, wait_until

def docker(env: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, env=os.environ | env, timeout=300)
    assert proc.returncode == 0 or not check, proc.stderr
    return proc


def containers(env: dict) -> dict[str, str]:
    """The stack's containers, service -> the engine's state, stopped ones too."""
    out = docker(env, "ps", "--all", "--filter", "label=com.docker.compose.project=orch",
                 "--format", '{{.Label "com.docker.compose.service"}} {{.State}}').stdout
    return dict(line.split(" ", 1) for line in out.splitlines() if line.strip())


def signin(webui: str, env_file: Path) -> dict:
    values = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line and not line.startswith("#"))
    token = httpx.post(f"{webui}/api/v1/auths/signin", json={"email": values["WEBUI_ADMIN_EMAIL"],
                                                              "password": values["WEBUI_ADMIN_PASSWORD"]}, timeout=60).json()["token"]
    return {"Authorization": f"Bearer {token}"}


def chat_titles(webui: str, auth: dict) -> list[str]:
    return sorted(c["title"] for c in httpx.get(f"{webui}/api/v1/chats/", headers=auth, timeout=60).json())


@pytest.fixture
def stack(docker_engine, docker_images, tiny_build, isolated_home, tmp_path):
    """A stack directory for the docker runtime, with the tiny build where orch up registers builds; it is taken down
    (volumes too) whatever the test did."""
    shutil.copytree(tiny_build, isolated_home / "data" / "orch" / "builds" / "tiny")
    d = tmp_path / "stack"
    env = os.environ | docker_engine
    ports = {"port": free_port(), "ollama_port": free_port()}
    model = json.loads((tiny_build / "build.json").read_text())["artifacts"][0]["ollama_name"]
    yield d, env, ports, model
    orch("down", "--dir", str(d), "--volumes", env=env, check=False)


@pytest.mark.timeout(1800)
def test_the_default_path_on_a_real_engine(stack, docker_images, docker_engine, artifacts_dir):
    d, env, ports, model = stack
    webui = f"http://127.0.0.1:{ports['port']}"
    up = ["up", "--runtime", "docker", "--offline", "--bind", "127.0.0.1", "--port", str(ports["port"]), "--ollama-port",
          str(ports["ollama_port"]), "--model", model, "--dir", str(d), "--wait", "300", "--json"]
    t = time.monotonic()
    first = orch(*up, env=env, timeout=900)
    seconds = time.monotonic() - t
    (artifacts_dir / "docker-up.json").write_text(json.dumps({"seconds_to_healthy": round(seconds, 1)}) + "\n")
    result = json.loads(first.stdout)
    checks = {c["name"]: c for c in result["health"]["checks"]}
    assert result["health"]["ok"] and checks["chat models"]["status"] == "ok", checks
    assert model in checks["chat models"]["data"]["models"], "the chat offers the model the containerised Ollama serves"
    assert [r["name"] for r in result["registered"]] == [model]
    assert f"{docker_images['ollama']} (built here by orch images build)" in first.stderr, first.stderr
    assert containers(docker_engine) == {"ollama": "running", "open-webui": "running"}
    published = docker(docker_engine, "ps", "--filter", "label=com.docker.compose.project=orch", "--format", "{{.Ports}}").stdout
    assert "0.0.0.0" not in published and published.count("127.0.0.1:") == 2, published

    status = orch("status", "--dir", str(d), "--json", env=env)
    assert {s["name"]: s["state"] for s in json.loads(status.stdout)["services"]} == {"ollama": "healthy", "open-webui": "healthy"}
    logs = orch("logs", "ollama", "--dir", str(d), env=env).stdout
    assert '"/api/tags"' in logs and "ollama-1" in logs and "open-webui-1" not in logs, logs[-2000:]

    again = orch(*up, env=env, timeout=600)
    assert "changes the stack" not in again.stderr and json.loads(again.stdout)["registered"] == []
    assert json.loads(again.stdout)["admin"]["password"] is None, "the password is shown once"

    # a chat, still in the write-ahead log, in a backup taken while the stack runs
    auth = signin(webui, d / ".env")
    made = httpx.post(f"{webui}/api/v1/chats/new", headers=auth, timeout=60,
                      json={"chat": {"title": "kept through a restore", "models": [model], "messages": []}})
    assert made.status_code == 200, made.text
    archive = orch("backup", "--dir", str(d), env=env).stdout.split(" to ", 1)[1].split(" (", 1)[0]

    # kill -9 of each container: orch status says so at once, and exits non-zero; orch up brings both back
    for service in ("open-webui", "ollama"):
        docker(docker_engine, "kill", f"orch-{service}-1")
        wait_until(lambda: containers(docker_engine)[service] != "running", timeout=30, what=f"{service} killed")
        down = orch("status", "--dir", str(d), "--json", env=env, check=False)
        states = {s["name"]: s["state"] for s in json.loads(down.stdout)["services"]}
        assert down.returncode == 1 and states[service] in ("exited", "restarting"), states
    assert json.loads(orch(*up, env=env, timeout=600).stdout)["health"]["ok"]

    # down, restore with the stack stopped, up: the chat is there
    orch("down", "--dir", str(d), env=env)
    assert set(containers(docker_engine).values()) <= {"exited"} or containers(docker_engine) == {}
    orch("restore", archive, "--dir", str(d), env=env)
    orch(*up, env=env, timeout=900)
    auth = signin(webui, d / ".env")
    assert "kept through a restore" in chat_titles(webui, auth)

    # the browser chat, through the containers
    values = dict(line.split("=", 1) for line in (d / ".env").read_text().splitlines() if "=" in line and not line.startswith("#"))
    browser_chat(webui, values["WEBUI_ADMIN_EMAIL"], values["WEBUI_ADMIN_PASSWORD"], "你好", artifacts_dir / "open-webui-docker-chat.png")

    # an Open WebUI image that crash-loops: seen at once (not after --wait), and the one before runs again on the data
    broken = crash_looping_image(docker_engine, docker_images["open-webui"])
    t = time.monotonic()
    failed = orch(*up[:-1], env=env | {"ORCH_WEBUI_VERSION": broken.rsplit(":v", 1)[1]}, timeout=900, check=False)
    assert failed.returncode == 1 and "rolled back" in failed.stderr, failed.stderr
    assert time.monotonic() - t < 240, "the crash loop was seen within seconds, not at the end of --wait 300"
    assert "restarting" in failed.stderr or "exited" in failed.stderr, failed.stderr
    assert containers(docker_engine) == {"ollama": "running", "open-webui": "running"}
    assert "kept through a restore" in chat_titles(webui, signin(webui, d / ".env"))

    orch("down", "--dir", str(d), env=env)
    assert containers(docker_engine) == {}, "orch down leaves no container"
    assert docker(docker_engine, "volume", "ls", "--filter", "label=com.docker.compose.project=orch", "-q").stdout.strip()
    orch("down", "--dir", str(d), "--volumes", env=env)
    assert not docker(docker_engine, "volume", "ls", "--filter", "label=com.docker.compose.project=orch", "-q").stdout.strip()


def crash_looping_image(env: dict, good: str) -> str:
    """An Open WebUI "release" that exits at once on start (a bad upgrade), built on the good one and tagged as orch images
    build tags a release, so that ORCH_WEBUI_VERSION=0.0.1 runs it as a user tries a release ahead."""
    tag = "orch.local/open-webui:v0.0.1"
    build = subprocess.run(["docker", "build", "-t", tag, "-"], input=f'FROM {good}\nCMD ["sh", "-c", "echo migration failed; exit 3"]\n',
                           capture_output=True, text=True, env=os.environ | env | {"DOCKER_BUILDKIT": "0"}, timeout=300)
    assert build.returncode == 0, build.stderr
    return tag


def test_gpu_without_an_nvidia_runtime_is_one_line(docker_engine, tmp_path):
    proc = orch("up", "--runtime", "docker", "--gpu", "--bind", "127.0.0.1", "--port", str(free_port()), "--ollama-port",
                str(free_port()), "--dir", str(tmp_path / "stack"), env=os.environ | docker_engine, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "Docker has no NVIDIA runtime" in lines[0], proc.stderr
    assert "--no-gpu" in lines[0] and not (tmp_path / "stack" / "compose.yaml").exists()


def test_an_ollama_on_loopback_is_refused_in_one_line_that_says_how(docker_engine, real_ollama, tmp_path):
    """The real Ollama on 127.0.0.1, as it binds by default: containers cannot reach it."""
    server = real_ollama()
    stack = tmp_path / "stack"
    try:
        proc = orch("up", "--runtime", "docker", "--host", server.url, "--bind", "127.0.0.1", "--port", str(free_port()),
                    "--dir", str(stack), env=os.environ | docker_engine, check=False)
        listening = subprocess.run(["ss", "-ltnp"], capture_output=True, text=True).stdout  # who answered, if anything did
    finally:
        if (stack / "compose.yaml").is_file():  # a stack that should never have started must not outlive the test
            orch("down", "--volumes", "--dir", str(stack), env=os.environ | docker_engine, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr + "\n" + "\n".join(
        ln for ln in listening.splitlines() if f":{server.port} " in ln)
    assert f"the Ollama at {server.url} listens on loopback only" in lines[0] and "OLLAMA_HOST=" in lines[0]
