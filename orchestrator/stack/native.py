"""The native runtime: `ollama serve` and `open-webui serve` under supervisord, for hosts without Docker or systemd.

supervisord (PyPI `supervisor`) is what rented GPU containers without systemd
already use: one supervisor per stack directory restarts a service that
crashes (an out-of-memory kill, a CUDA error), rotates its logs, and stops
exactly what it started. orch writes its configuration (supervisord.conf, no
secrets in it: they reach supervisord's environment from .env), starts it,
and talks to it over its XML-RPC socket. Open WebUI goes into a virtualenv of
its own (webui/install.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import psutil

from orchestrator.errors import OrchError
from orchestrator.events import Reporter
from orchestrator.files import write_text
from orchestrator import settings, transport
from orchestrator.builder import ollama_source
from orchestrator.stack import backup, compose, preflight
from orchestrator.stack.config import SECRET_KEYS, StackPlan, changed_settings, webui_version, write_env
from orchestrator.stack.runtime import ServiceState, Started, save_webui_release, webui_release
from orchestrator.webui import install as webui_install
from orchestrator.webui.install import PipStep, install_steps, run_pip  # noqa: F401  (the runtime's, and its tests')

OLLAMA_INSTALL = "curl -fsSL https://ollama.com/install.sh | sh"
VERSION_ENV, VENV_ENV, PREINSTALL_ENV = settings.WEBUI_VERSION_ENV, settings.WEBUI_VENV_ENV, settings.WEBUI_PREINSTALL_ENV


def webui_package() -> str:
    return f"open-webui=={webui_version()}"


def webui_venv() -> Path:
    return webui_install.default_venv(webui_version())


def installed_exe(release: dict) -> Path:
    """The open-webui of a release record, only from a virtualenv orch itself installed that package into: a record
    (or a restored file) can name which of orch's installs runs, never a program of its own."""
    venv = Path(release.get("venv", ""))
    holds = webui_install.holds(venv) if venv.is_absolute() else None
    if holds != release.get("release") or not (venv / "bin" / "open-webui").is_file():
        raise OrchError(f"{release.get('release')} is no longer installed by orch in {venv}, so it cannot run again: "
                        f"orch up installs the pinned release")
    return venv / "bin" / "open-webui"


def ensure_webui(reporter: Reporter, *, gpu: bool = False) -> Path:
    """The open-webui executable, installed into its own virtualenv on first use."""
    package = webui_package()
    return webui_install.ensure(webui_venv(), package, install_steps(package, gpu=gpu), reporter)


@dataclass
class Service:
    name: str
    command: list[str]
    env: dict
    health_url: str
    start_seconds: int = 5  # running this long counts as started


def services(plan: StackPlan, webui_exe: Path | None) -> list[Service]:
    """The processes for `plan`, with the environment the compose template gives the containers (secrets come from .env)."""
    out = []
    if plan.ollama_url is None:
        env = compose.load_template()["services"]["ollama"]["environment"] | {"OLLAMA_HOST": f"{plan.ollama_bind}:{plan.ollama_port}"}
        # through stale_group: a llama-server the last `ollama serve` left behind (killed, it cannot end it) is ended first
        reaper = [sys.executable, "-m", "orchestrator.stack.stale_group", str(plan.directory / "run" / "ollama.pgid"), "llama-server", "--"]
        out.append(Service("ollama", [*reaper, ollama_source.find_ollama() or "ollama", "serve"], env,
                           f"http://127.0.0.1:{plan.ollama_port}/api/version"))
    if webui_exe is None:
        return out
    env = compose.environment(compose.render(plan), "open-webui") | {
        "OLLAMA_BASE_URL": plan.ollama_url or f"http://127.0.0.1:{plan.ollama_port}",  # this host's view, not a container's
        "DATA_DIR": str(plan.directory / "open-webui-data")}
    with_secrets = [sys.executable, "-m", "orchestrator.stack.secret_env", str(plan.directory / ".env"), *SECRET_KEYS, "--"]
    out.append(Service("open-webui", [*with_secrets, str(webui_exe), "serve", "--host", plan.bind, "--port", str(plan.port)], env,
                       f"{plan.local_webui_url}/health", start_seconds=10))
    return out


# what the services may inherit from the user's environment: locale, paths, GPUs, proxies, and their own settings
KEPT = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM", "SHELL", "LD_LIBRARY_PATH",
        "XDG_RUNTIME_DIR", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "HF_ENDPOINT", "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE")
KEPT_PREFIXES = ("LC_", "CUDA_", "NVIDIA_", "ROCR_", "HIP_", "HSA_", "GPU_", "OLLAMA_")
PROXIES = ("http_proxy", "https_proxy", "no_proxy", "all_proxy")


def scrubbed_environment(environ: dict | None = None) -> dict:
    """The user's environment without what the services must not see (tokens, keys, passwords)."""
    environ = settings.child_env() if environ is None else environ
    return {k: v for k, v in environ.items()
            if k in KEPT or k.startswith(KEPT_PREFIXES) or k.lower() in PROXIES}


LOG_BYTES = "20MB"
LOG_BACKUPS = 5


def _quote(value: str) -> str:
    """A value for supervisord's `environment=`, which it reads with shlex in non-POSIX mode: no escapes, so the value
    goes inside the quote it does not contain (JSON settings hold double quotes), and supervisord strips every quote
    at either end; % doubled, since supervisord expands %(...)s."""
    value = str(value)
    quote = '"' if '"' not in value else "'"
    if quote in value or "\n" in value or value[:1] in ("'", '"') or value[-1:] in ("'", '"'):
        raise OrchError(f"the setting {value[:60]!r} cannot be passed through supervisord (it holds both kinds of quotes, "
                        "a line break, or starts or ends with a quote): change it")
    return quote + value.replace("%", "%%") + quote


def config(directory: Path, services: list[Service], socket: Path) -> str:
    """supervisord.conf for the stack: restart on crash, rotated logs, process groups stopped whole."""
    lines = [
        "; written by orch up --runtime native; changes are lost at the next orch up",
        "[unix_http_server]", f"file={socket}", "chmod=0700", "",
        "[supervisord]", f"logfile={directory / 'logs' / 'supervisord.log'}", f"logfile_maxbytes={LOG_BYTES}",
        f"logfile_backups={LOG_BACKUPS}", f"pidfile={directory / 'run' / 'supervisord.pid'}", f"childlogdir={directory / 'logs'}",
        f"directory={directory}", "loglevel=info", "",
        "[rpcinterface:supervisor]", "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface", "",
        "[supervisorctl]", f"serverurl=unix://{socket}", "",
    ]
    for priority, service in enumerate(services, 1):
        env_line = ",".join(f"{k}={_quote(v)}" for k, v in service.env.items())  # secrets: read from .env by secret_env
        lines += [
            f"[program:{service.name}]",
            "command=" + " ".join(_arg(a) for a in service.command),
            f"environment={env_line}",
            f"priority={priority * 10}",
            "autostart=true", "autorestart=true", f"startsecs={service.start_seconds}", "startretries=10",
            "stopsignal=TERM", "stopwaitsecs=20", "stopasgroup=true", "killasgroup=true",
            "redirect_stderr=true", f"stdout_logfile={directory / 'logs' / (service.name + '.log')}",
            f"stdout_logfile_maxbytes={LOG_BYTES}", f"stdout_logfile_backups={LOG_BACKUPS}", "",
        ]
    return "\n".join(lines)


def _arg(a: str) -> str:
    return a if a and all(c not in a for c in " \t\"'%;") else '"' + a.replace('"', '\\"').replace("%", "%%") + '"'


def socket_path(directory: Path) -> Path:
    """The control socket: in the stack's run/ directory, or under /tmp when that path is too long for a unix socket."""
    path = directory / "run" / "supervisor.sock"
    if len(str(path)) < 100:
        return path
    return Path("/tmp") / f"orch-supervisor-{hashlib.sha256(str(directory).encode()).hexdigest()[:16]}.sock"


class Supervisor:
    """The supervisord of one stack directory, reached through its XML-RPC socket."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.conf = directory / "supervisord.conf"
        self.socket = socket_path(directory)
        self.logs = directory / "logs"

    def rpc(self):
        from xmlrpc.client import ServerProxy

        from supervisor.xmlrpc import SupervisorTransport

        return ServerProxy("http://localhost", transport=SupervisorTransport(serverurl=f"unix://{self.socket}"))

    def running(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            return self.rpc().supervisor.getState()["statename"] == "RUNNING"
        except Exception:  # noqa: BLE001  a stale socket answers with connection errors of several kinds
            return False

    def pid(self) -> int | None:
        try:
            return int(self.rpc().supervisor.getPID())
        except Exception:  # noqa: BLE001
            return None

    def processes(self) -> dict[str, dict]:
        if not self.running():
            return {}
        return {p["name"]: p for p in self.rpc().supervisor.getAllProcessInfo()}

    def start(self) -> None:
        """Start supervisord with this stack's config; it daemonizes and starts the programs itself.

        Its environment, which every program inherits, is the user's scrubbed to what running them needs: no
        HF_TOKEN, cloud keys or the stack's secrets reach ollama serve.
        """
        for d in (self.directory / "run", self.logs):
            d.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([sys.executable, "-m", "supervisor.supervisord", "-c", str(self.conf)], env=scrubbed_environment(),
                              capture_output=True, text=True, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while not self.running():
            if time.monotonic() > deadline:
                why = preflight.first_line(proc.stderr) or preflight.first_line(self.tail("supervisord", 1)) or "no output"
                raise OrchError(f"supervisord did not start ({why}): see {self.logs / 'supervisord.log'}")
            time.sleep(0.2)

    def apply(self) -> list[str]:
        """Take a rewritten config into the running supervisord: new, changed and removed programs (as supervisorctl update)."""
        rpc = self.rpc()
        [[added, changed, removed]] = rpc.supervisor.reloadConfig()
        for name in removed + changed:
            rpc.supervisor.stopProcessGroup(name)
            rpc.supervisor.removeProcessGroup(name)
        for name in changed + added:
            rpc.supervisor.addProcessGroup(name)
        return changed + added

    def shutdown(self, timeout: float = 40) -> bool:
        """Stop every program and supervisord itself; True if one was running."""
        if not self.running():
            return False
        pid = self.pid()
        self.rpc().supervisor.shutdown()
        deadline = time.monotonic() + timeout
        while pid and psutil.pid_exists(pid) and time.monotonic() < deadline:
            try:
                if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.Error:
                break
            time.sleep(0.2)
        return True

    def tail(self, name: str, lines: int = 200) -> str:
        path = self.logs / f"{name}.log"
        if not path.is_file():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def wait_healthy(service: Service, supervisor: Supervisor, timeout: float, reporter: Reporter) -> None:
    """Until the service answers its health URL; a program supervisord gave up on (FATAL) is an error at once."""
    deadline = time.monotonic() + timeout
    with reporter.task(f"waiting for {service.name}"):
        while time.monotonic() < deadline:
            state = supervisor.processes().get(service.name, {}).get("statename")
            if state in ("FATAL", "EXITED", None):
                last = supervisor.tail(service.name, 5).splitlines()
                raise OrchError(f"{service.name} did not stay up ({state or 'not configured'}: {last[-1][:200] if last else 'no output'}): "
                                f"orch logs {service.name}")
            try:
                if transport.get(service.health_url).status_code == 200:
                    return
            except transport.TransportError:
                pass
            time.sleep(1)
    raise OrchError(f"{service.name} did not answer {service.health_url} within {timeout:g} s: orch logs {service.name}")


class NativeRuntime:
    """ollama serve and open-webui serve as supervised processes of this host."""

    name = "native"

    def preflight(self, plan: StackPlan) -> None:
        """Ports free (unless this stack's own programs hold them) and an ollama to run; nothing is started or written."""
        held = {name for name, p in Supervisor(plan.directory).processes().items() if p["statename"] in ("RUNNING", "STARTING")}
        if plan.webui and "open-webui" not in held:
            preflight.port_free(plan.bind, plan.port, "Open WebUI")
        if plan.ollama_url is None:
            if ollama_source.find_ollama() is None:
                raise OrchError(f"ollama is not installed (none on PATH, none built by orch): install it with: {OLLAMA_INSTALL}, "
                                "or build it without GitHub: orch install-ollama; or pass --host URL of one that runs")
            if "ollama" not in held:
                preflight.port_free(plan.ollama_bind, plan.ollama_port, "Ollama")

    def up(self, plan: StackPlan, *, wait: float, reporter: Reporter) -> Started:
        """Write supervisord.conf, start supervisord (or hand it the new config), and wait until every service answers.

        When Open WebUI itself changes (another release or install), a backup is taken first; if the new one does not
        become healthy, the old one is started again on the data as it was.
        """
        plan.directory.mkdir(parents=True, exist_ok=True)
        exe = ensure_webui(reporter, gpu=plan.gpu) if plan.webui else None
        env_path = plan.directory / ".env"
        created = write_env(env_path)
        wanted = services(plan, exe)
        settings_path = plan.directory / "settings.json"
        settings = next((s.env for s in wanted if s.name == "open-webui"), {})
        old = json.loads(settings_path.read_text()) if settings_path.is_file() else settings
        changed = changed_settings(old, settings) if settings else []
        running_now, wanted_release = webui_release(plan.directory), {"release": webui_package(), "venv": str(webui_venv())}
        upgrade = exe is not None and running_now is not None and running_now != wanted_release
        taken, why_not = None, "--no-backup" if not plan.backup else "there was no data yet"
        if upgrade and plan.backup and (plan.directory / backup.DATA / backup.DATABASE).is_file():
            taken = backup.before_upgrade(plan.directory, running_now["release"], webui_package(), reporter)
        supervisor = Supervisor(plan.directory)
        self._apply(plan, wanted, supervisor, reporter)
        if settings:
            write_text(settings_path, json.dumps(settings, indent=2) + "\n")
        try:
            for service in wanted:
                wait_healthy(service, supervisor, wait, reporter)
        except OrchError as e:
            if not upgrade:
                raise
            self._roll_back(plan, running_now, taken, supervisor, wait, reporter)
            raise backup.rolled_back(webui_package(), running_now["release"], taken, e, why_not) from None
        if exe is not None:
            save_webui_release(plan.directory, **wanted_release)
        return Started(env_path, created, changed)

    def _apply(self, plan: StackPlan, wanted: list[Service], supervisor: Supervisor, reporter: Reporter) -> None:
        write_text(supervisor.conf, config(plan.directory, wanted, supervisor.socket), mode=0o600)
        if supervisor.running():
            restarted = supervisor.apply()
            if restarted:
                reporter.note(f"supervisord restarts {', '.join(restarted)} with the new settings")
        else:
            supervisor.start()

    def _roll_back(self, plan: StackPlan, previous: dict, taken: Path | None, supervisor: Supervisor, wait: float,
                   reporter: Reporter) -> None:
        """The Open WebUI that ran before (from orch's own install of it), on the data from the backup taken before."""
        exe = installed_exe(previous)
        reporter.note(f"rolling back to {previous['release']}", level="warning")
        if supervisor.processes().get("open-webui", {}).get("statename") in ("RUNNING", "STARTING", "BACKOFF"):
            supervisor.rpc().supervisor.stopProcess("open-webui")
        if taken is not None:
            backup.restore(taken, plan.directory)
        wanted = services(plan, exe)
        self._apply(plan, wanted, supervisor, reporter)
        if supervisor.processes().get("open-webui", {}).get("statename") not in ("RUNNING", "STARTING"):
            supervisor.rpc().supervisor.startProcess("open-webui")
        for service in wanted:
            wait_healthy(service, supervisor, wait, reporter)
        save_webui_release(plan.directory, previous["release"], venv=str(exe.parent.parent))

    def down(self, directory: Path, *, volumes: bool = False) -> list[str]:
        supervisor = Supervisor(directory)
        names = [n for n, p in supervisor.processes().items() if p["statename"] not in ("STOPPED", "EXITED", "FATAL")]
        stopped = names + ["supervisord"] if supervisor.shutdown() else []
        if volumes:
            shutil.rmtree(directory / "open-webui-data", ignore_errors=True)
        return stopped

    def status(self, directory: Path) -> list[ServiceState]:
        supervisor = Supervisor(directory)
        if not supervisor.running():
            return [ServiceState("supervisord", "not running", f"orch up starts it with {supervisor.conf}")]
        return [ServiceState(name, p["statename"].lower(), p["description"] or (f"pid {p['pid']}" if p["pid"] else ""))
                for name, p in supervisor.processes().items()]

    data_in_stack = True

    def running(self, directory: Path) -> bool:
        return Supervisor(directory).running()

    @contextmanager
    def webui_data(self, directory: Path) -> Iterator[Path | None]:
        """The live data directory itself: a backup reads its database through SQLite's backup API."""
        data = directory / backup.DATA
        yield data if (data / backup.DATABASE).is_file() else None

    def put_webui_data(self, directory: Path, data: Path) -> None:
        """Nothing to do: the data is in the stack directory, and the restore's journaled swap put it there."""

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
            yield from _follow({n: supervisor.logs / f"{n}.log" for n in names})


def _follow(paths_by_name: dict[str, Path]) -> Iterator[str]:
    """New lines of each log as they are written, reopening a log that supervisord rotated."""
    handles = {}
    for name, path in paths_by_name.items():
        h = open(path, errors="replace")
        h.seek(0, os.SEEK_END)
        handles[name] = (h, os.fstat(h.fileno()).st_ino)
    while True:
        for name, (h, inode) in list(handles.items()):
            for line in h.readlines():
                yield f"{name}: {line.rstrip()}"
            try:
                if os.stat(paths_by_name[name]).st_ino != inode:  # rotated: the old file was renamed to .1
                    h.close()
                    h = open(paths_by_name[name], errors="replace")
                    handles[name] = (h, os.fstat(h.fileno()).st_ino)
            except OSError:
                pass
        time.sleep(0.5)
