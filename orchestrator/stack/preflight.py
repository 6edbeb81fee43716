"""Checks before `orch up` starts anything: each failure is one line naming the fix."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

from orchestrator.errors import OrchError
from orchestrator.files import nearest_existing

DOCKER_INSTALL = "install Docker Engine (https://docs.docker.com/engine/install/)"
MIN_FREE_BYTES = 8 << 30  # the two images and a 7B q4_K_M model


def docker_binary() -> str:
    docker = shutil.which("docker")
    if docker is None:
        raise OrchError(f"docker is not installed (no docker on PATH): {DOCKER_INSTALL}")
    return docker


def docker_daemon(docker: str, timeout: float = 15.0) -> dict:
    """The daemon's root directory and version; an unreachable daemon is an error naming the usual fixes."""
    try:
        proc = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}|{{.DockerRootDir}}|{{range $k, $v := .Runtimes}}{{$k}} {{end}}"],
                              capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise OrchError(f"the Docker daemon did not answer within {timeout:g} s: check it with docker info") from None
    out = proc.stdout.strip()
    if proc.returncode != 0 or not out or out.startswith("|"):
        why = first_line(proc.stderr) or "no answer"
        raise OrchError(f"the Docker daemon is not reachable ({why}): start it (sudo systemctl start docker) "
                        "or add your user to the docker group")
    version, root, runtimes = (out.split("|") + ["", ""])[:3]
    return {"version": version, "root": root, "runtimes": runtimes.split()}


def nvidia_runtime(info: dict) -> None:
    """--gpu with Docker needs the NVIDIA Container Toolkit's runtime; without it compose fails after pulling everything."""
    if "nvidia" not in info.get("runtimes", []):
        raise OrchError(f"--gpu, but Docker has no NVIDIA runtime (it has {', '.join(info.get('runtimes') or ['none'])}): install the "
                        "NVIDIA Container Toolkit (nvidia-ctk runtime configure --runtime=docker, then restart Docker), or pass --no-gpu")


def compose_plugin(docker: str) -> str:
    proc = subprocess.run([docker, "compose", "version", "--short"], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise OrchError("the Docker Compose plugin is missing (docker compose version failed): "
                        "install docker-compose-plugin (https://docs.docker.com/compose/install/linux/)")
    return proc.stdout.strip()


def port_free(bind: str, port: int, what: str) -> None:
    """Bind the port for a moment: the surest test that a published port will be free."""
    with socket.socket(socket.AF_INET6 if ":" in bind else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((bind, port))
        except OSError as e:
            taken = f"port {port} on {bind} for {what} is already in use ({e.strerror})"
            if what == "Ollama" and (url := _ollama_at(bind, port)):
                raise OrchError(f"{taken} by an Ollama: use it with --host {url}, or stop it, or pass --ollama-port "
                                "with another port") from None
            raise OrchError(f"{taken}: stop what listens there "
                            f"or pass {'--port' if what == 'Open WebUI' else '--ollama-port'} with another port") from None


def _ollama_at(bind: str, port: int) -> str | None:
    """The URL of an Ollama answering on the port (one the user already runs, which the stack can use as it is)."""
    from orchestrator.ollama.client import Ollama

    host = "127.0.0.1" if bind in ("0.0.0.0", "") else "::1" if bind == "::" else bind
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    with Ollama(url, timeout=3.0, connect=2.0) as server:
        return url if server.version() is not None else None


def disk(path: Path, need: int = MIN_FREE_BYTES) -> None:
    probe = nearest_existing(path)
    free = shutil.disk_usage(probe).free
    if free < need:
        raise OrchError(f"only {free / 2**30:.1f} GiB free under {probe}, the stack needs about {need / 2**30:.0f} GiB "
                        "(images and models): free some space")


def first_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[0][:200] if lines else ""


def detect_gpu() -> tuple[bool, str]:
    """NVIDIA through nvidia-smi; the reason is shown so the user knows which was chosen and why."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False, "no nvidia-smi on PATH: CPU only (pass --gpu to reserve NVIDIA GPUs anyway)"
    proc = subprocess.run([smi, "-L"], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    gpus = [ln for ln in proc.stdout.splitlines() if ln.startswith("GPU ")]
    if proc.returncode != 0 or not gpus:
        return False, "nvidia-smi found no GPU: CPU only"
    return True, f"{len(gpus)} NVIDIA GPU(s) found by nvidia-smi: reserved for Ollama (pass --no-gpu to skip)"


def host_ollama_reachable(docker: str, url: str) -> None:
    """An Ollama on this host, named by --host, must answer where containers reach the host (the bridge's gateway,
    host.docker.internal to them); one bound to loopback, Ollama's default, cannot be reached from there."""
    from urllib.parse import urlparse

    port = urlparse(url if "://" in url else f"http://{url}").port or 11434
    proc = subprocess.run([docker, "network", "inspect", "bridge", "--format", "{{range .IPAM.Config}}{{.Gateway}} {{end}}"],
                          capture_output=True, text=True, timeout=30)
    gateway = next(iter(proc.stdout.split()), "") if proc.returncode == 0 else ""
    if not loopback_only(port):  # the kernel's listening sockets first: a connect alone was once answered here regardless
        if not gateway:
            return  # no default bridge to ask about: Docker's own error, if any, comes at start
        try:
            with socket.create_connection((gateway, port), timeout=2):
                return
        except OSError:
            pass
    raise OrchError(f"the Ollama at {url} listens on loopback only, and containers reach this host at "
                    f"{gateway or 'the Docker bridge gateway'}: start it with OLLAMA_HOST={gateway or 'GATEWAY'}:{port} (the Docker "
                    "bridge alone, not your network), or let orch run Ollama (orch up without --host), or use --runtime native")


def loopback_only(port: int) -> bool:
    """Whether this host listens on TCP `port` and only on loopback addresses (as Ollama does by default)."""
    import ipaddress

    import psutil

    try:
        listening = [c.laddr.ip for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
    except (psutil.Error, OSError):
        return False
    return bool(listening) and all(ipaddress.ip_address(ip.split("%")[0]).is_loopback for ip in listening)
