"""The runtime protocol: one interface (preflight, up, down, status, logs) that docker, native and kubernetes implement.

A leaf: the protocol and the records it passes, nothing that picks or imports a
runtime (stack/choice.py does that). A stack directory remembers which runtime
started it and where its services answer (stack.json), so `orch down`,
`status` and `logs` need no flags.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Protocol, TypeVar

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


Plan = TypeVar("Plan", contravariant=True)


class Runtime(Protocol[Plan]):
    """`Plan` is what the runtime starts from: a StackPlan (docker, native) or a rendered directory (kubernetes)."""

    name: str

    def preflight(self, plan: Plan) -> None:
        """Check what `up` needs (ports, binaries, daemons, disk) without starting or writing anything."""

    def up(self, plan: Plan, *, wait: float, reporter: Reporter) -> Started:
        """Start (or reconcile) the stack and wait until its services answer; the caller has run preflight first."""

    def down(self, directory: Path, *, volumes: bool = False) -> list[str]:
        """Stop exactly what `up` started; with volumes, delete the models and chats too. The names of what was stopped."""

    def status(self, directory: Path) -> list[ServiceState]:
        """Each service: running or not, and a detail (pid, health, image)."""

    def logs(self, directory: Path, services: list[str] | None = None, *, follow: bool = False) -> Iterator[str]:
        """The services' recent log lines, then (with follow) new ones as they come."""
