"""The runtime protocol: one interface (preflight, up, down, status, logs) that docker, native and kubernetes implement.

A stack directory remembers which runtime started it and where its services
answer (stack.json), so `orch down`, `status` and `logs` need no flags.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Protocol

from orchestrator.errors import BadInput, OrchError
from orchestrator.events import Reporter
from orchestrator.files import write_text

RECORD = "stack.json"


@dataclass
class Started:
    """What `up` leaves for the caller: the .env, whether its secrets are new (shown once), settings changed since last time."""

    env: Path
    created_secrets: bool
    changed: list[str]


@dataclass
class ServiceState:
    name: str
    state: str  # running, starting, backoff, exited, stopped, ...: the runtime's own word, lower case
    detail: str = ""

    @property
    def running(self) -> bool:
        return self.state == "running"


@dataclass
class StackRecord:
    runtime: str
    ollama_url: str
    webui_url: str | None

    def save(self, directory: Path) -> None:
        write_text(directory / RECORD, json.dumps(asdict(self), indent=2) + "\n")


class Runtime(Protocol):
    name: str

    def preflight(self, plan) -> None:
        """Check what `up` needs (ports, binaries, daemons, disk) without starting or writing anything."""

    def up(self, plan, *, wait: float, reporter: Reporter) -> Started:
        """Start (or reconcile) the stack and wait until its services answer; the caller has run preflight first."""

    def down(self, directory: Path, *, volumes: bool = False) -> list[str]:
        """Stop exactly what `up` started; with volumes, delete the models and chats too. The names of what was stopped."""

    def status(self, directory: Path) -> list[ServiceState]:
        """Each service: running or not, and a detail (pid, health, image)."""

    def logs(self, directory: Path, services: list[str] | None = None, *, follow: bool = False) -> Iterator[str]:
        """The services' recent log lines, then (with follow) new ones as they come."""


def stream(cmd: list[str]) -> Iterator[str]:
    """The lines a command prints (stdout and stderr together) as they come; the command is killed when the reader stops."""
    import subprocess

    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL) as proc:
        try:
            yield from (line.rstrip("\n") for line in proc.stdout)
        finally:
            proc.kill()


def choose(requested: str | None) -> tuple[Runtime, str]:
    """docker where a daemon answers, else native; an explicit --runtime is taken as given."""
    from orchestrator.stack import preflight

    if requested is not None:
        if requested not in ("docker", "native"):
            raise BadInput(f"--runtime {requested} is not docker or native: pick one")
        return by_name(requested), f"--runtime {requested}"
    docker = shutil.which("docker")
    if docker is None:
        return by_name("native"), "no docker on PATH: running ollama and open-webui as processes"
    try:
        preflight.docker_daemon(docker, timeout=5)
    except OrchError:
        return by_name("native"), "docker is installed but its daemon does not answer: running ollama and open-webui as processes"
    return by_name("docker"), "docker answers: running the compose stack"


def by_name(name: str) -> Runtime:
    if name == "docker":
        from orchestrator.stack.docker import DockerRuntime

        return DockerRuntime()
    if name == "native":
        from orchestrator.stack.native import NativeRuntime

        return NativeRuntime()
    raise OrchError(f"unknown runtime {name!r} in the stack record: run orch up again")


def load(directory: Path) -> tuple[Runtime, StackRecord]:
    """The runtime that started the stack in `directory`, and where its services answer."""
    try:
        record = StackRecord(**json.loads((directory / RECORD).read_text()))
    except (OSError, ValueError, TypeError):
        raise OrchError(f"no stack in {directory}: run orch up first (or pass --dir)") from None
    return by_name(record.runtime), record
