"""`orch up` after the runtime has started the services: register what was built, probe, and say where to chat."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from orchestrator import paths
from orchestrator.errors import OrchError
from orchestrator.events import SILENT, Reporter
from orchestrator.ollama import probe, register
from orchestrator.ollama.client import Ollama
from orchestrator.stack.config import FIRST_START_ONLY, StackPlan, read_env
from orchestrator.stack.runtime import Runtime, StackRecord


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

    def as_dict(self) -> dict:
        return {"runtime": self.runtime, "env": str(self.env), "urls": self.urls, "admin": self.admin,
                "first_start_only": self.first_start_only, "registered": [r.as_dict() for r in self.registered],
                "health": self.health.as_dict(), "api": self.api}


def built_models(builds: Path | None = None) -> list[tuple[Path, str]]:
    """(Modelfile, Ollama name) for every build under the data directory."""
    root = builds or paths.data_home() / "builds"
    found = []
    for record in sorted(root.glob("*/build.json")) if root.is_dir() else []:
        try:
            found += [(mf, name) for mf, name in register.names_in_build(record.parent) if mf.is_file()]
        except (OrchError, KeyError, ValueError):
            continue
    return found


def _register(modelfile: Path, name: str, ollama: str, reporter: Reporter) -> register.Registration:
    """A build found under the data directory, registered only if its FROM is the GGUF beside it; a refusal is reported."""
    try:
        return register.register(modelfile, name, ollama, reporter=reporter, beside_only=True)
    except OrchError as e:
        return register.Registration(name, "failed", str(e), "", host=ollama)


def up(plan: StackPlan, runtime: Runtime, *, wait: float = 600, reporter: Reporter = SILENT) -> UpResult:
    """Start the stack and return what the user needs: URLs, credentials (the first time), registrations, health."""
    started = runtime.up(plan, wait=wait, reporter=reporter)
    ollama = plan.local_ollama_url
    StackRecord(runtime.name, ollama, plan.local_webui_url).save(plan.directory)
    with Ollama(ollama, timeout=10) as server:
        have = set(server.models())
    registered = [_register(mf, name, ollama, reporter) for mf, name in built_models() if name not in have]
    report = probe.probe(probe.Probe(ollama, model=plan.default_model, webui=plan.local_webui_url))
    env = read_env(started.env) if plan.webui else {}
    api = None
    if plan.api and not report.failed:
        from orchestrator.stack import api_keys

        key = api_keys.ensure(plan.directory, plan.local_webui_url)  # after registration: the new models are granted too
        api = {"url": f"{plan.local_webui_url}/api", "key": key, "keys_file": str(plan.directory / api_keys.KEYS_FILE)}
    return UpResult(runtime.name, started.env, report, api=api,
                    urls={"chat": plan.local_webui_url, "ollama": ollama, "openai": f"{ollama}/v1"},
                    admin={"email": env.get("WEBUI_ADMIN_EMAIL"), "password": env.get("WEBUI_ADMIN_PASSWORD") if started.created_secrets else None},
                    first_start_only=[k for k in started.changed if k in FIRST_START_ONLY], registered=registered)
