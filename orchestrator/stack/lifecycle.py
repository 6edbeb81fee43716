"""The one owner of a stack's life: how it was asked to run, its start, status, and Open WebUI's data out and back in.

Every command that touches a stack comes through here. It finishes a restore
that a kill interrupted (stack/journal.py) before anything else, writes the
stack's record before anything starts (so that a failed first start can still
be stopped), and reaches the services only through the Runtime protocol:
nothing here asks which runtime it is.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from orchestrator import paths, settings
from orchestrator.errors import OrchError
from orchestrator.events import SILENT, Reporter
from orchestrator.ollama import probe, register
from orchestrator.ollama.client import Ollama
from orchestrator.stack import backup, journal
from orchestrator.stack.config import FIRST_START_ONLY, StackPlan, read_env
from orchestrator.stack.runtime import Runtime, ServiceState, StackRecord, webui_release

UP_STATES = ("running", "starting", "ready", "healthy")  # supervisord's, Docker's and Kubernetes' words for a service that is up
DEFAULTS = {"port": 3000, "bind": "0.0.0.0", "ollama_port": 11434, "host": None, "model": None}


def opened(directory: Path, reporter: Reporter = SILENT) -> tuple[Runtime, StackRecord]:
    """The runtime that started the stack and its record, after finishing any restore a kill interrupted (unless
    another orch holds the stack: then it is that one's to finish)."""
    from orchestrator.stack import choice

    with contextlib.suppress(Busy):
        with locked(directory):
            journal.recover(directory, reporter)
    return choice.load(directory)


class Busy(OrchError):
    pass


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """One orch at a time changes a stack (up, restore); a second is refused in one line. The lock is on the directory
    itself (no file left behind), and dies with its holder."""
    if not directory.is_dir():
        yield
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Busy(f"another orch command is changing the stack in {directory}: wait for it to finish") from None
        yield
    finally:
        os.close(fd)


# --- how the stack runs: the record, and flags given again ------------------------------------------------------------

def planned(directory: Path, asked: dict, **rest) -> tuple[StackPlan, list[str]]:
    """The plan for `orch up`: each of port, bind, ollama_port, host and model as asked, else as the stack last ran,
    else the default; and a line for each that a flag changed. `asked` holds None for a flag not given; nothing is
    written."""
    record = StackRecord.load(directory)
    before = {k: getattr(record, k) for k in DEFAULTS} if record else {}
    defaults = DEFAULTS | ({"bind": "127.0.0.1"} if rest.get("api") else {})  # keys never cross a network in plain HTTP unasked
    chosen = {k: asked.get(k) if asked.get(k) is not None else before.get(k, default) for k, default in defaults.items()}
    changes = [f"{k.replace('_', '-')} {before[k] or 'none'} -> {chosen[k]}" for k in DEFAULTS
               if record is not None and asked.get(k) is not None and asked[k] != before[k]]
    webui = rest.pop("webui", None)
    if record is not None and webui is not None and webui != record.webui:
        changes.append("Open WebUI " + ("added" if webui else "left out (--no-webui)"))
    webui = webui if webui is not None else (record.webui if record else True)
    plan = StackPlan(directory=directory, port=chosen["port"], bind=chosen["bind"], ollama_port=chosen["ollama_port"],
                     ollama_url=chosen["host"], default_model=chosen["model"], webui=webui, **rest)
    return plan, changes


def runtime_for(directory: Path, requested: str | None) -> tuple[Runtime, str, list[str]]:
    """The runtime `orch up` runs on: --runtime, else the one the stack last ran on, else docker where its daemon
    answers, else native; why; and a change line when --runtime moves the stack."""
    from orchestrator.stack import choice

    record = StackRecord.load(directory)
    if requested is None and record is not None:
        return choice.by_name(record.runtime), f"the stack in {directory} runs on it", []
    runtime, why = choice.choose(requested)
    moved = record is not None and runtime.name != record.runtime
    return runtime, why, [f"runtime {record.runtime} -> {runtime.name}"] if moved else []


def record_of(plan: StackPlan, runtime: str) -> StackRecord:
    return StackRecord(runtime, plan.local_ollama_url, plan.local_webui_url, port=plan.port, bind=plan.bind,
                       ollama_port=plan.ollama_port, host=plan.ollama_url, model=plan.default_model, webui=plan.webui)


def _default_stack() -> StackRecord | None:
    """The default stack, for commands given no --host: none when $OLLAMA_HOST names another server."""
    return None if settings.ollama_host() else StackRecord.load(paths.default_stack_dir())


def default_model() -> str | None:
    """The chat's default model of the default stack (orch up --model), for health given no --host or --model."""
    record = _default_stack()
    return record.model if record else None


def default_ollama_url() -> str | None:
    """Where the default stack's Ollama answers, for commands given no --host and no $OLLAMA_HOST (None: no stack)."""
    record = _default_stack()
    return record.ollama_url if record else None


# --- up --------------------------------------------------------------------------------------------------------------

@dataclass
class UpResult:
    runtime: str
    env: Path
    health: probe.Report
    urls: dict
    admin: dict
    first_start_only: list[str] = field(default_factory=list)
    registered: list[register.Registration] = field(default_factory=list)
    api: dict | None = None  # with --api: the keyed URL, and a key the first time (shown once)
    revoked: list[str] = field(default_factory=list)  # keys revoked again (a restore had brought them back)

    def as_dict(self) -> dict:
        return {"runtime": self.runtime, "env": str(self.env), "urls": self.urls, "admin": self.admin,
                "first_start_only": self.first_start_only, "registered": [r.as_dict() for r in self.registered],
                "health": self.health.as_dict(), "api": self.api, "revoked_again": self.revoked}


def _builds(builds: Path | None, each) -> list:
    """`each(build directory)`'s items for every build under the data directory; one it cannot read is passed over."""
    root = builds or paths.data_home() / "builds"
    found = []
    for record in sorted(root.glob("*/build.json")) if root.is_dir() else []:
        try:
            found += each(record.parent)
        except (OrchError, OSError, ValueError, KeyError, TypeError):
            continue
    return found


def built_models(builds: Path | None = None) -> list[tuple[Path, str]]:
    """(Modelfile, Ollama name) for every build under the data directory."""
    return _builds(builds, lambda build: [(mf, name) for mf, name in register.names_in_build(build) if mf.is_file()])


def demo_models(builds: Path | None = None) -> list[str]:
    """The Ollama names of the tiny random builds under the data directory (orch build tiny's), which the chat says."""
    from orchestrator.builder.catalog import is_demo

    def names(build: Path) -> list[str]:
        record = json.loads((build / "build.json").read_text())
        return [a["ollama_name"] for a in record["artifacts"]] if is_demo(record["model"]["params"]) else []

    return _builds(builds, names)


def describe_demos(url: str, env: dict, offered: list[str], reporter: Reporter) -> None:
    """Each tiny model the chat offers says in Open WebUI's model list what it is (a demo whose replies are noise)."""
    from orchestrator import transport
    from orchestrator.builder.catalog import TINY_IS_A_DEMO
    from orchestrator.webui.client import Admin

    demos = [name for name in demo_models() if name in offered]
    if not demos:
        return
    try:
        with Admin(url, env["WEBUI_ADMIN_EMAIL"], env["WEBUI_ADMIN_PASSWORD"]) as webui:
            for name in demos:
                webui.describe(name, f"orch build tiny: {TINY_IS_A_DEMO}.")
    except (OrchError, transport.TransportError, KeyError) as e:
        reporter.note(f"could not describe {', '.join(demos)} in Open WebUI as a demo ({e}); the chat works without it", "warning")


def _register(modelfile: Path, name: str, ollama: str, reporter: Reporter) -> register.Registration:
    """A build found under the data directory, registered only if its FROM is the GGUF beside it; a refusal is reported."""
    try:
        return register.register(modelfile, name, ollama, reporter=reporter, beside_only=True)
    except OrchError as e:
        return register.Registration(name, "failed", str(e), "", host=ollama)


def up(plan: StackPlan, runtime: Runtime, *, wait: float = 600, reporter: Reporter = SILENT) -> UpResult:
    """Start the stack and return what the user needs: URLs, credentials (the first time), registrations, health.

    The record is written before anything starts: a start that fails (or is killed) leaves a stack that orch
    status, logs and down still know."""
    plan.directory.mkdir(parents=True, exist_ok=True)
    with locked(plan.directory):
        journal.recover(plan.directory, reporter)
        record_of(plan, runtime.name).save(plan.directory)
        started = runtime.up(plan, wait=wait, reporter=reporter)
    ollama = plan.local_ollama_url
    with Ollama(ollama, timeout=10) as server:
        have = set(server.models())
    registered = [_register(mf, name, ollama, reporter) for mf, name in built_models() if name not in have]
    report = probe.probe(probe.Probe(ollama, model=plan.default_model, webui=plan.local_webui_url))
    env = read_env(started.env) if plan.webui else {}
    if plan.webui and not report.failed:
        offered = chat_models(plan.local_webui_url, env, plan.default_model)
        report.checks.append(offered)
        describe_demos(plan.local_webui_url, env, offered.data.get("models", []), reporter)
    api, revoked = None, []
    if plan.webui and not report.failed:
        from orchestrator.stack import api_keys

        revoked = api_keys.revoke_again(plan.directory, plan.local_webui_url)
        if plan.api:
            key = api_keys.ensure(plan.directory, plan.local_webui_url)  # after registration: the new models are granted too
            api = {"url": f"{plan.local_webui_url}/api", "key": key, "keys_file": str(plan.directory / api_keys.KEYS_FILE)}
    return UpResult(runtime.name, started.env, report, api=api, revoked=revoked,
                    urls={"chat": plan.local_webui_url, "ollama": ollama, "openai": f"{ollama}/v1"},
                    admin={"email": env.get("WEBUI_ADMIN_EMAIL"), "password": env.get("WEBUI_ADMIN_PASSWORD") if started.created_secrets else None},
                    first_start_only=[k for k in started.changed if k in FIRST_START_ONLY], registered=registered)


def chat_models(url: str, env: dict, model: str | None) -> probe.Check:
    """What the browser chat offers, asked of Open WebUI as its admin: Ollama's models (the default one among them), or a
    failure that says Open WebUI cannot reach Ollama."""
    import time

    from orchestrator import transport
    from orchestrator.webui.client import Admin, served_by_ollama

    t = time.monotonic()
    try:
        with Admin(url, env["WEBUI_ADMIN_EMAIL"], env["WEBUI_ADMIN_PASSWORD"]) as webui:
            names = sorted(m["id"] for m in webui.models() if served_by_ollama(m))
    except (OrchError, transport.TransportError, KeyError) as e:
        return probe.Check("chat models", probe.FAIL, f"Open WebUI did not list its models ({e}): orch logs open-webui")
    ms = round((time.monotonic() - t) * 1000, 1)
    if not names:
        return probe.Check("chat models", probe.FAIL, "Open WebUI lists no model from Ollama: it cannot reach Ollama, or Ollama has "
                                                      "none (orch logs open-webui; orch register a build)", ms)
    if model and model not in names:
        return probe.Check("chat models", probe.FAIL, f"the default model {model} is not among the chat's ({', '.join(names)}): "
                                                      "orch register its build, or orch up --model another", ms, {"models": names})
    return probe.Check("chat models", probe.OK, f"the chat offers {', '.join(names)}", ms, {"models": names})


# --- status ----------------------------------------------------------------------------------------------------------

@dataclass
class Status:
    runtime: str
    record: StackRecord
    services: list[ServiceState]
    loaded: list[dict]
    ollama_error: str | None

    @property
    def healthy(self) -> bool:
        """Every service up (one that answers while its supervisor still counts its first seconds too) and Ollama answering."""
        return bool(self.services) and all(s.state in UP_STATES for s in self.services) and self.ollama_error is None

    def as_dict(self) -> dict:
        return {"runtime": self.runtime, "ollama": self.record.ollama_url, "webui": self.record.webui_url, "healthy": self.healthy,
                "services": [{"name": s.name, "state": s.state, "running": s.running, "detail": s.detail} for s in self.services],
                "loaded": [{"name": m.get("name"), "size": m.get("size", 0), "size_vram": m.get("size_vram", 0)} for m in self.loaded],
                "ollama_error": self.ollama_error}


def status(directory: Path, reporter: Reporter = SILENT) -> Status:
    runtime, record = opened(directory, reporter)
    states = runtime.status(directory)
    expected = ["ollama"] * (record.host is None) + ["open-webui"] * bool(record.webui)
    states += [ServiceState(name, "missing", "the runtime does not know it: orch up starts it again") for name in expected
               if not any(s.name == name or s.name.startswith(name + "-") for s in states)]  # ollama-0, a StatefulSet's pod
    try:
        with Ollama(record.ollama_url) as server:
            loaded, unreachable = server.loaded(), None
    except OrchError as e:
        loaded, unreachable = [], str(e)
    return Status(runtime.name, record, states, loaded, unreachable)


# --- Open WebUI's data out and back in --------------------------------------------------------------------------------

def take_backup(directory: Path, out: Path | None, reporter: Reporter = SILENT) -> tuple[Path, int]:
    """A backup of the stack, running or stopped: the archive and how many models it lists."""
    runtime, record = opened(directory, reporter)
    with Ollama(record.ollama_url, timeout=10) as server:
        models = server.listed()  # Ollama down: the backup is still worth having, without the list
    with runtime.webui_data(directory) as data:
        path = backup.create(directory, out, models=models, open_webui=(webui_release(directory) or {}).get("release", ""),
                             data=data)
    return path, len(models)


def restore(directory: Path, archive: Path, reporter: Reporter = SILENT) -> backup.Manifest:
    """Put a backup back into a stopped stack (or a new directory): checked whole first, swapped in by the journal."""
    from orchestrator.stack import choice

    directory.mkdir(parents=True, exist_ok=True)
    with locked(directory):
        journal.recover(directory, reporter)
        record = StackRecord.load(directory)
        runtime = choice.by_name(record.runtime) if record else None
        if runtime is not None and runtime.running(directory):
            raise OrchError(f"the stack in {directory} is running: stop it first with orch down --dir {directory}, then restore")
        put = None if runtime is None or runtime.data_in_stack else (lambda data: runtime.put_webui_data(directory, data))
        return backup.restore(archive, directory, put_data=put, reporter=reporter)
