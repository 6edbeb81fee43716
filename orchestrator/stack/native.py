"""The native runtime: `ollama serve` and `open-webui serve` as supervised background processes, for hosts without Docker.

Open WebUI goes into a virtualenv of its own (as pipx would) so its many
dependencies never meet orch's. Each process gets a pid file recording its
start time, so `orch down` stops exactly what `orch up` started: a pid reused
by another program is left alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import psutil

from orchestrator import paths
from orchestrator.errors import OrchError
from orchestrator.events import Reporter
from orchestrator.files import write_text
from orchestrator.ollama import client
from orchestrator.stack import compose, preflight
from orchestrator.stack.config import SECRET_KEYS, WEBUI_VERSION, StackPlan, changed_settings, read_env, write_env
from orchestrator.stack.runtime import ServiceState, Started

OLLAMA_INSTALL = "curl -fsSL https://ollama.com/install.sh | sh"
WEBUI_PACKAGE = f"open-webui=={WEBUI_VERSION}"
VENV_ENV = "ORCH_WEBUI_VENV"  # where Open WebUI's virtualenv lives [default: ~/.local/share/orch/open-webui-venv]
PREINSTALL_ENV = "ORCH_WEBUI_PREINSTALL"  # pip requirements installed first, e.g. "torch==2.13.0" for a CPU-only wheel


def webui_venv() -> Path:
    return Path(os.environ.get(VENV_ENV) or paths.data_home() / "open-webui-venv")


def ensure_webui(reporter: Reporter) -> Path:
    """The open-webui executable, installed into its own virtualenv on first use."""
    venv = webui_venv()
    exe = venv / "bin" / "open-webui"
    marker = venv / ".orch-installed"
    if exe.is_file() and marker.is_file() and marker.read_text().strip() == WEBUI_PACKAGE:
        return exe
    reporter.note(f"installing {WEBUI_PACKAGE} into {venv} (once; several minutes)")
    if not (venv / "bin" / "python").is_file():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    log = venv / "install.log"
    with open(log, "ab") as out:
        for requirement in [r for r in os.environ.get(PREINSTALL_ENV, "").split() if r] + [WEBUI_PACKAGE]:
            if subprocess.run([*pip, requirement], stdout=out, stderr=subprocess.STDOUT).returncode != 0:
                raise OrchError(f"pip could not install {requirement} into {venv}: see {log} (a PyPI mirror can be set with PIP_INDEX_URL)")
    marker.write_text(WEBUI_PACKAGE + "\n")
    return exe


@dataclass
class Service:
    name: str
    command: list[str]
    env: dict
    health_url: str


def services(plan: StackPlan, webui_exe: Path, secrets: dict) -> list[Service]:
    """The processes for `plan`, with the environment the compose template gives the containers."""
    out = []
    if plan.ollama_url is None:
        env = compose.load_template()["services"]["ollama"]["environment"] | {"OLLAMA_HOST": f"{plan.ollama_bind}:{plan.ollama_port}"}
        out.append(Service("ollama", [shutil.which("ollama") or "ollama", "serve"], env,
                           f"http://127.0.0.1:{plan.ollama_port}/api/version"))
    env = compose.environment(compose.render(plan), "open-webui") | secrets | {
        "OLLAMA_BASE_URL": plan.ollama_url or f"http://127.0.0.1:{plan.ollama_port}",  # this host's view, not a container's
        "DATA_DIR": str(plan.directory / "open-webui-data")}
    out.append(Service("open-webui", [str(webui_exe), "serve", "--host", plan.bind, "--port", str(plan.port)], env,
                       f"{plan.local_webui_url}/health"))
    return out


def _start_time(pid: int) -> float | None:
    """When `pid` started: with the pid it names one process for good (a reused pid has another start time)."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


class Supervisor:
    """Pid files and logs of the stack's processes under its directory."""

    def __init__(self, directory: Path):
        self.run, self.logs = directory / "run", directory / "logs"

    def pidfile(self, name: str) -> Path:
        return self.run / f"{name}.pid"

    def alive(self, name: str) -> dict | None:
        """The record of `name` if the very process it names still runs."""
        try:
            record = json.loads(self.pidfile(name).read_text())
        except (OSError, ValueError):
            return None
        return record if _start_time(record["pid"]) == record["start"] else None

    def start(self, service: Service) -> dict:
        """Start `service` unless it already runs with the same command and settings (a changed one is restarted)."""
        wanted = hashlib.sha256(json.dumps([service.command, service.env], sort_keys=True).encode()).hexdigest()[:16]
        if (running := self.alive(service.name)) is not None:
            if running.get("settings") == wanted:
                return running
            self.stop(service.name)
        self.run.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        log = open(self.logs / f"{service.name}.log", "ab")
        proc = subprocess.Popen(service.command, env=os.environ | service.env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        record = {"pid": proc.pid, "start": _start_time(proc.pid), "command": service.command, "settings": wanted}
        write_text(self.pidfile(service.name), json.dumps(record) + "\n", mode=0o600)
        return record

    def stop(self, name: str, timeout: float = 20) -> bool:
        """Stop `name`'s process group if it is still the process orch started; True if something was stopped."""
        record = self.alive(name)
        if record is None:
            self.pidfile(name).unlink(missing_ok=True)  # stale: its process is gone or the pid now names another
            return False
        pid = record["pid"]
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while _start_time(pid) == record["start"] and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.2)
        if _start_time(pid) == record["start"]:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _reap(pid)
        self.pidfile(name).unlink(missing_ok=True)
        return True

    def tail(self, name: str, lines: int = 200) -> str:
        path = self.logs / f"{name}.log"
        if not path.is_file():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _reap(pid: int) -> None:
    """Collect the child's exit status when this process started it (orch up and down in one process, as in tests)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def wait_healthy(service: Service, supervisor: Supervisor, timeout: float, reporter: Reporter) -> None:
    deadline = time.monotonic() + timeout
    with reporter.task(f"waiting for {service.name}"):
        while time.monotonic() < deadline:
            if supervisor.alive(service.name) is None:
                last = supervisor.tail(service.name, 5).splitlines()
                raise OrchError(f"{service.name} exited during start-up ({last[-1][:200] if last else 'no output'}): "
                                f"orch logs {service.name}")
            try:
                if client.get(service.health_url).status_code == 200:
                    return
            except client.TransportError:
                pass
            time.sleep(1)
    raise OrchError(f"{service.name} did not answer {service.health_url} within {timeout:g} s: orch logs {service.name}")


class NativeRuntime:
    """ollama serve and open-webui serve as processes of this host, for machines without Docker."""

    name = "native"

    def preflight(self, plan: StackPlan) -> None:
        """Ports free (unless our own processes hold them) and an ollama to run; nothing is started or written."""
        supervisor = Supervisor(plan.directory)
        if supervisor.alive("open-webui") is None:
            preflight.port_free(plan.bind, plan.port, "Open WebUI")
        if plan.ollama_url is None:
            if shutil.which("ollama") is None:
                raise OrchError(f"ollama is not installed (no ollama on PATH): install it with: {OLLAMA_INSTALL}, or pass --ollama-url")
            if supervisor.alive("ollama") is None:
                preflight.port_free(plan.ollama_bind, plan.ollama_port, "Ollama")

    def up(self, plan: StackPlan, *, wait: float, reporter: Reporter) -> Started:
        """Start the stack's processes in order, each healthy before the next."""
        self.preflight(plan)
        supervisor = Supervisor(plan.directory)
        plan.directory.mkdir(parents=True, exist_ok=True)
        exe = ensure_webui(reporter)
        env_path = plan.directory / ".env"
        created = write_env(env_path)
        started = services(plan, exe, read_env(env_path))
        settings_path = plan.directory / "settings.json"
        settings = {k: v for k, v in started[-1].env.items() if k not in SECRET_KEYS}
        old = json.loads(settings_path.read_text()) if settings_path.is_file() else settings
        changed = changed_settings(old, settings)
        write_text(settings_path, json.dumps(settings, indent=2) + "\n")
        for service in started:
            supervisor.start(service)
            wait_healthy(service, supervisor, wait, reporter)
        return Started(env_path, created, changed)

    def down(self, directory: Path, *, volumes: bool = False) -> list[str]:
        supervisor = Supervisor(directory)
        stopped = [name for name in ("open-webui", "ollama") if supervisor.stop(name)]
        if volumes:
            shutil.rmtree(directory / "open-webui-data", ignore_errors=True)
        return stopped

    def status(self, directory: Path) -> list[ServiceState]:
        supervisor = Supervisor(directory)
        out = []
        for name in ("ollama", "open-webui"):
            rec = supervisor.alive(name)
            out.append(ServiceState(name, rec is not None, f"pid {rec['pid']}" if rec else ""))
        return out

    def logs(self, directory: Path, services: list[str] | None = None, *, follow: bool = False) -> Iterator[str]:
        """The last lines of each service's log (all that have one by default); with follow, new lines as they come."""
        supervisor = Supervisor(directory)
        names = services or [n for n in ("ollama", "open-webui") if (supervisor.logs / f"{n}.log").is_file()]
        for name in names:
            if not (supervisor.logs / f"{name}.log").is_file():
                raise OrchError(f"no log for {name} in {supervisor.logs}: services are ollama and open-webui")
            yield f"== {name} =="
            yield from supervisor.tail(name).splitlines()
        if follow:
            handles = {n: open(supervisor.logs / f"{n}.log", errors="replace") for n in names}
            for h in handles.values():
                h.seek(0, os.SEEK_END)
            while True:
                for n, h in handles.items():
                    for line in h.readlines():
                        yield f"{n}: {line.rstrip()}"
                time.sleep(0.5)
