"""The runtime protocol: one interface (preflight, up, down, status, logs, and Open WebUI's data out and in) that docker,
native and kubernetes implement.

A leaf: the protocol and the records it passes, nothing that picks or imports a
runtime (stack/choice.py does that). A stack directory remembers which runtime
started it, how (ports, bind address, default model) and where its services
answer (stack.json), so every later command needs no flags; and which Open WebUI
release it last ran healthy (open-webui.json), in one schema for every runtime.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
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
    """What `orch up` was asked for, kept so that every later command (and a bare `orch up`) does the same."""

    runtime: str
    ollama_url: str
    webui_url: str | None
    port: int = 3000
    bind: str = "0.0.0.0"
    ollama_port: int = 11434
    host: str | None = None  # an Ollama that already runs (up --host): none is started
    model: str | None = None
    webui: bool = True

    def save(self, directory: Path) -> None:
        write_text(directory / RECORD, json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> "StackRecord | None":
        """The record, or None when there is none. An older orch wrote only the first three fields: the ports and the
        bind address are read back from its URLs then, so the stack keeps running where it ran."""
        from urllib.parse import urlsplit

        try:
            raw = json.loads((directory / RECORD).read_text())
            if "port" not in raw:
                webui = urlsplit(raw.get("webui_url") or "")
                raw |= {"webui": bool(raw.get("webui_url"))} | ({"port": webui.port} if webui.port else {})
                if webui.hostname and webui.hostname not in ("127.0.0.1", "localhost"):
                    raw["bind"] = webui.hostname
                ollama = urlsplit(raw["ollama_url"])
                if ollama.hostname in ("127.0.0.1", "localhost") and ollama.port:
                    raw["ollama_port"] = ollama.port
                else:
                    raw["host"] = raw["ollama_url"]  # an Ollama that already ran elsewhere
            return cls(**{f.name: raw[f.name] for f in fields(cls) if f.name in raw})
        except (OSError, ValueError, TypeError, KeyError):
            return None


RELEASE_RECORD = "open-webui.json"  # the Open WebUI the stack last ran healthy: {"release": ...} and, natively, its venv


def webui_release(directory: Path) -> dict | None:
    """The release record, read in today's schema (older orch wrote {"package", "exe"} or {"image"})."""
    try:
        raw = json.loads((directory / RELEASE_RECORD).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict):
        return None
    if "release" in raw:
        return raw
    if "image" in raw:
        return {"release": raw["image"]}
    if "package" in raw and "exe" in raw:
        return {"release": raw["package"], "venv": str(Path(raw["exe"]).parent.parent)}
    return None


def save_webui_release(directory: Path, release: str, **more: str) -> None:
    write_text(directory / RELEASE_RECORD, json.dumps({"release": release, **more}, indent=2) + "\n")


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

    data_in_stack: bool  # Open WebUI's data is the stack directory's open-webui-data (native), not a volume (docker)

    def running(self, directory: Path) -> bool:
        """Whether any of the stack's services runs (a restore needs them all stopped)."""

    @contextmanager
    def webui_data(self, directory: Path) -> Iterator[Path | None]:
        """Open WebUI's data as it is now, as a directory to read (None before it has any): the live one, or a copy."""

    def put_webui_data(self, directory: Path, data: Path) -> None:
        """Put a checked backup's Open WebUI data where the runtime keeps it, the stack stopped (a volume: not in place)."""
