"""The native runtime: `ollama serve` and `open-webui serve` as supervised background processes, for hosts without Docker.

Open WebUI goes into a virtualenv of its own (as pipx would) so its many
dependencies never meet orch's. Each process gets a pid file recording its
start time, so `orch down` stops exactly what `orch up` started: a pid reused
by another program is left alone.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from orchestrator import compose, paths
from orchestrator.errors import OrchError
from orchestrator.state import fingerprint, write_text

OLLAMA_INSTALL = "curl -fsSL https://ollama.com/install.sh | sh"
WEBUI_PACKAGE = f"open-webui=={compose.WEBUI_VERSION}"
VENV_ENV = "ORCH_WEBUI_VENV"  # where Open WebUI's virtualenv lives [default: ~/.local/share/orch/open-webui-venv]
PREINSTALL_ENV = "ORCH_WEBUI_PREINSTALL"  # pip requirements installed first, e.g. "torch==2.13.0" for a CPU-only wheel


def webui_venv() -> Path:
    return Path(os.environ.get(VENV_ENV) or paths.data_home() / "open-webui-venv")


def ensure_webui(console=None) -> Path:
    """The open-webui executable, installed into its own virtualenv on first use."""
    venv = webui_venv()
    exe = venv / "bin" / "open-webui"
    marker = venv / ".orch-installed"
    if exe.is_file() and marker.is_file() and marker.read_text().strip() == WEBUI_PACKAGE:
        return exe
    if console is not None:
        console.print(f"installing {WEBUI_PACKAGE} into {venv} (once; several minutes)")
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


def services(plan: compose.StackPlan, webui_exe: Path, secrets: dict) -> list[Service]:
    """The processes for `plan`, with the environment the compose template gives the containers."""
    out = []
    if plan.ollama_url is None:
        env = compose.load_template()["services"]["ollama"]["environment"] | {"OLLAMA_HOST": f"{plan.ollama_bind}:{plan.ollama_port}"}
        out.append(Service("ollama", [shutil.which("ollama") or "ollama", "serve"], env,
                           f"http://127.0.0.1:{plan.ollama_port}/api/version"))
    env = compose.webui_environment(compose.render(plan)) | secrets | {
        "OLLAMA_BASE_URL": plan.ollama_url or f"http://127.0.0.1:{plan.ollama_port}",  # this host's view, not a container's
        "DATA_DIR": str(plan.directory / "open-webui-data")}
    out.append(Service("open-webui", [str(webui_exe), "serve", "--host", plan.bind, "--port", str(plan.port)], env,
                       f"{plan.local_webui_url}/health"))
    return out


def _start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (field 22 of /proc/PID/stat): with the pid it names one process for good."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


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
        wanted = fingerprint(service.command, service.env)
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


def wait_healthy(service: Service, supervisor: Supervisor, timeout: float, progress=None) -> None:
    import httpx

    task = progress.add_task(f"waiting for {service.name}", total=None) if progress is not None else None
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if supervisor.alive(service.name) is None:
                last = supervisor.tail(service.name, 5).splitlines()
                raise OrchError(f"{service.name} exited during start-up ({last[-1][:200] if last else 'no output'}): "
                                f"orch logs {service.name}")
            try:
                if httpx.get(service.health_url, timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
    finally:
        if task is not None:
            progress.remove_task(task)
    raise OrchError(f"{service.name} did not answer {service.health_url} within {timeout:g} s: orch logs {service.name}")


def preflight_native(plan: compose.StackPlan) -> Supervisor:
    """Ports free (unless our own processes hold them) and an ollama to run; nothing is started or written."""
    from orchestrator import preflight

    supervisor = Supervisor(plan.directory)
    if supervisor.alive("open-webui") is None:
        preflight.port_free(plan.bind, plan.port, "Open WebUI")
    if plan.ollama_url is None:
        if shutil.which("ollama") is None:
            raise OrchError(f"ollama is not installed (no ollama on PATH): install it with: {OLLAMA_INSTALL}, or pass --ollama-url")
        if supervisor.alive("ollama") is None:
            preflight.port_free(plan.ollama_bind, plan.ollama_port, "Ollama")
    return supervisor


def up(plan: compose.StackPlan, *, wait: float = 600, progress=None) -> tuple[Path, bool, list[str]]:
    """Start the stack's processes in order, each healthy before the next.

    Returns the .env path, whether its secrets are new, and the Open WebUI
    settings that differ from the last start.
    """
    console = progress.console if progress is not None else None
    supervisor = preflight_native(plan)
    plan.directory.mkdir(parents=True, exist_ok=True)
    exe = ensure_webui(console)
    env_path = plan.directory / ".env"
    created = compose.write_env(env_path)
    started = services(plan, exe, compose.read_env(env_path))
    settings_path = plan.directory / "settings.json"
    settings = {k: v for k, v in started[-1].env.items() if k not in compose.SECRET_KEYS}
    old = json.loads(settings_path.read_text()) if settings_path.is_file() else settings
    changed = compose.changed_settings(old, settings)
    write_text(settings_path, json.dumps(settings, indent=2) + "\n")
    for service in started:
        supervisor.start(service)
        wait_healthy(service, supervisor, wait, progress)
    return env_path, created, changed


def down(directory: Path) -> list[str]:
    supervisor = Supervisor(directory)
    return [name for name in ("open-webui", "ollama") if supervisor.stop(name)]


def print_logs(directory: Path, names: list[str] | None = None, follow: bool = False) -> None:
    """The last lines of each service's log (all that have one by default); with follow, new lines as they come."""
    supervisor = Supervisor(directory)
    names = names or [n for n in ("ollama", "open-webui") if (supervisor.logs / f"{n}.log").is_file()]
    for name in names:
        if not (supervisor.logs / f"{name}.log").is_file():
            raise OrchError(f"no log for {name} in {supervisor.logs}: services are ollama and open-webui")
        print(f"== {name} ==\n{supervisor.tail(name)}", flush=True)
    if follow:
        handles = {n: open(supervisor.logs / f"{n}.log", errors="replace") for n in names}
        for h in handles.values():
            h.seek(0, os.SEEK_END)
        while True:
            for n, h in handles.items():
                for line in h.readlines():
                    print(f"{n}: {line}", end="", flush=True)
            time.sleep(0.5)
