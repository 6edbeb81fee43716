"""compose/compose.yaml rendered for a StackPlan: the stack's services and their settings, for every runtime.

Docker runs the rendered document; the native runtime takes each service's
environment from it, so one template owns the settings. Rendering and
validation are pure; write_stack is the only part that touches disk.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from urllib.parse import urlparse

from orchestrator import paths
from orchestrator.errors import OrchError
from orchestrator.files import write_text
from orchestrator.stack.config import StackPlan, changed_settings, write_env


def _resources() -> Path:
    return paths.resource_dir("compose", "compose_files")


def load_template() -> dict:
    import yaml

    return yaml.safe_load((_resources() / "compose.yaml").read_text(encoding="utf-8"))


def render(plan: StackPlan, template: dict | None = None) -> dict:
    """The compose document for `plan` (secrets stay in .env, which the document references)."""
    doc = copy.deepcopy(template if template is not None else load_template())
    services = doc["services"]
    ollama, webui = services["ollama"], services["open-webui"]
    ollama["image"] = plan.images["ollama"]
    ollama["ports"] = [f"{plan.ollama_bind}:{plan.ollama_port}:11434"]
    ollama["mem_limit"] = ollama_memory_limit()
    webui["image"] = plan.images["open-webui"]
    webui["ports"] = [f"{plan.bind}:{plan.port}:8080"]
    env = webui["environment"]
    if plan.default_model:
        env["DEFAULT_MODELS"] = plan.default_model
    if plan.offline:
        env |= {"OFFLINE_MODE": "True", "HF_HUB_OFFLINE": "1"}
    if plan.gpu:
        ollama["deploy"] = {"resources": {"reservations": {"devices": [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]}}}
    if not plan.webui:
        del services["open-webui"]
        del doc["volumes"]["open-webui"]
    if plan.ollama_url:
        del services["ollama"]
        del doc["volumes"]["ollama"]
        del webui["depends_on"]
        env["OLLAMA_BASE_URL"], on_this_host = container_url(plan.ollama_url)
        if on_this_host:
            webui["extra_hosts"] = ["host.docker.internal:host-gateway"]
    return doc


def ollama_memory_limit(margin: int = 2 << 30) -> str:
    """All of this host's memory but `margin` (at least 1 GiB): the host keeps room for itself and Open WebUI."""
    import psutil

    return f"{max(1 << 30, psutil.virtual_memory().total - margin) // (1 << 20)}m"


def container_url(url: str) -> tuple[str, bool]:
    """The URL as a container sees it: this host's loopback becomes host.docker.internal."""
    parsed = urlparse(url if "://" in url else f"http://{url}")
    if parsed.hostname in ("127.0.0.1", "localhost", "0.0.0.0", "::1"):
        return f"{parsed.scheme}://host.docker.internal:{parsed.port or 11434}", True
    return f"{parsed.scheme}://{parsed.hostname}:{parsed.port or 11434}", False


def validate(doc: dict) -> dict:
    """Check the rendered document against the vendored Compose Specification schema."""
    import jsonschema

    schema = json.loads((_resources() / "compose-spec.json").read_text())
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        where = ".".join(str(p) for p in e.path) or "the document"
        raise OrchError(f"the rendered compose file is invalid at {where}: {e.message}: report this as an orch bug")
    return doc


def check(plan: StackPlan) -> dict:
    """Render and validate; nothing is started or written."""
    return validate(render(plan))


def environment(doc: dict, service: str) -> dict:
    """A service's settings in a rendered document (the secrets stay in .env)."""
    return ((doc.get("services") or {}).get(service) or {}).get("environment") or {}


def write_stack(plan: StackPlan) -> tuple[Path, bool, list[str], dict]:
    """compose.yaml and .env (0600) in the stack directory: the .env path, whether its secrets are new, changed settings,
    and the validated document."""
    import yaml

    plan.directory.mkdir(parents=True, exist_ok=True)
    env_path, compose_path = plan.directory / ".env", plan.directory / "compose.yaml"
    created = write_env(env_path)
    old_doc = yaml.safe_load(compose_path.read_text()) if compose_path.is_file() else None
    doc = check(plan)
    changed = changed_settings(environment(old_doc, "open-webui"), environment(doc, "open-webui")) if old_doc else []
    text = "# rendered by orch up; the template is compose/compose.yaml in orch\n" + yaml.safe_dump(doc, sort_keys=False)
    if not compose_path.is_file() or compose_path.read_text() != text:
        write_text(compose_path, text)
    return env_path, created, changed, doc
