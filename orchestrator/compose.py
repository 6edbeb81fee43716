"""The stack `orch up` runs: compose/compose.yaml rendered with the user's choices, and its .env of secrets.

Planning (StackPlan -> a compose dict and .env values) is pure; write_stack is
the only part that touches disk. Secrets are generated once and kept across
renders: Open WebUI signs sessions with WEBUI_SECRET_KEY, and a new one logs
everyone out.
"""

from __future__ import annotations

import copy
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from orchestrator import paths
from orchestrator.errors import OrchError

# The only place the images are pinned. Ollama 0.17.1 fixes CVE-2026-7482 (heap leak through /api/create).
OLLAMA_IMAGE = "ollama/ollama:0.17.1"
WEBUI_VERSION = "0.12.4"
WEBUI_IMAGE = f"ghcr.io/open-webui/open-webui:v{WEBUI_VERSION}"
ADMIN_EMAIL = "admin@orch.local"
SECRET_KEYS = ("WEBUI_SECRET_KEY", "WEBUI_ADMIN_EMAIL", "WEBUI_ADMIN_PASSWORD")  # in .env only
# read by Open WebUI only on its first start (it then keeps them in its database)
FIRST_START_ONLY = ("DEFAULT_MODELS", "ENABLE_SIGNUP", "ENABLE_OPENAI_API")


@dataclass(frozen=True)
class StackPlan:
    directory: Path
    port: int = 3000
    bind: str = "0.0.0.0"
    ollama_port: int = 11434
    expose_ollama: bool = False
    ollama_url: str | None = None  # an Ollama that already runs; no ollama service then
    gpu: bool = False
    offline: bool = False
    default_model: str | None = None
    images: dict = field(default_factory=lambda: {"ollama": OLLAMA_IMAGE, "open-webui": WEBUI_IMAGE})

    @property
    def local_webui_url(self) -> str:
        """Where this host reaches Open WebUI: loopback unless it is bound to one address only."""
        host = "127.0.0.1" if self.bind in ("0.0.0.0", "::", "127.0.0.1") else self.bind
        return f"http://{host}:{self.port}"

    @property
    def ollama_bind(self) -> str:
        return "0.0.0.0" if self.expose_ollama else "127.0.0.1"

    def warnings(self) -> list[str]:
        out = []
        if self.expose_ollama:
            out.append(f"Ollama will answer on every interface at port {self.ollama_port} with no authentication; Docker's "
                       "published ports bypass host firewalls such as ufw")
        if self.bind == "0.0.0.0":
            out.append(f"Open WebUI listens on every interface at port {self.port} (it has sign-in; Docker's published ports "
                       "bypass host firewalls such as ufw): pass --bind 127.0.0.1 to keep it on this machine")
        return out


def load_template() -> dict:
    import yaml

    return yaml.safe_load((paths.resource_dir("compose", "compose_files") / "compose.yaml").read_text(encoding="utf-8"))


def render(plan: StackPlan, template: dict | None = None) -> dict:
    """The compose document for `plan` (secrets stay in .env, which the document references)."""
    doc = copy.deepcopy(template if template is not None else load_template())
    services = doc["services"]
    ollama, webui = services["ollama"], services["open-webui"]
    ollama["image"] = plan.images["ollama"]
    ollama["ports"] = [f"{plan.ollama_bind}:{plan.ollama_port}:11434"]
    webui["image"] = plan.images["open-webui"]
    webui["ports"] = [f"{plan.bind}:{plan.port}:8080"]
    env = webui["environment"]
    if plan.default_model:
        env["DEFAULT_MODELS"] = plan.default_model
    if plan.offline:
        env |= {"OFFLINE_MODE": "True", "HF_HUB_OFFLINE": "1"}
    if plan.gpu:
        ollama["deploy"] = {"resources": {"reservations": {"devices": [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]}}}
    if plan.ollama_url:
        del services["ollama"]
        del doc["volumes"]["ollama"]
        del webui["depends_on"]
        env["OLLAMA_BASE_URL"], on_this_host = container_url(plan.ollama_url)
        if on_this_host:
            webui["extra_hosts"] = ["host.docker.internal:host-gateway"]
    return doc


def container_url(url: str) -> tuple[str, bool]:
    """The URL as a container sees it: this host's loopback becomes host.docker.internal."""
    parsed = urlparse(url if "://" in url else f"http://{url}")
    if parsed.hostname in ("127.0.0.1", "localhost", "0.0.0.0", "::1"):
        return f"{parsed.scheme}://host.docker.internal:{parsed.port or 11434}", True
    return f"{parsed.scheme}://{parsed.hostname}:{parsed.port or 11434}", False


def env_values(existing: dict[str, str]) -> dict[str, str]:
    """The .env: the secret key and admin account, generated once and then kept as they are."""
    values = dict(existing)
    values.setdefault("WEBUI_SECRET_KEY", secrets.token_urlsafe(48))
    values.setdefault("WEBUI_ADMIN_EMAIL", ADMIN_EMAIL)
    values.setdefault("WEBUI_ADMIN_PASSWORD", secrets.token_urlsafe(18))
    return values


def read_env(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    values = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip().strip("'\"")
    return values


@dataclass
class WrittenStack:
    compose: Path
    env: Path
    created_secrets: bool  # True the first time: the admin password is shown once
    changed: list[str]  # settings that differ from the last render (some only take on a first start)


def write_stack(plan: StackPlan) -> WrittenStack:
    """Write compose.yaml and .env (0600) into the stack directory; unchanged files are left untouched."""
    import yaml

    plan.directory.mkdir(parents=True, exist_ok=True)
    env_path, compose_path = plan.directory / ".env", plan.directory / "compose.yaml"
    created = write_env(env_path)
    old_doc = yaml.safe_load(compose_path.read_text()) if compose_path.is_file() else None
    doc = render(plan)
    changed = changed_settings(webui_environment(old_doc), webui_environment(doc)) if old_doc else []
    text = "# rendered by orch up; the template is compose/compose.yaml in orch\n" + yaml.safe_dump(doc, sort_keys=False)
    if not compose_path.is_file() or compose_path.read_text() != text:
        from orchestrator.state import write_text

        write_text(compose_path, text)
    return WrittenStack(compose_path, env_path, created_secrets=created, changed=changed)


def write_env(env_path: Path) -> bool:
    """Write the .env (0600) with the secrets, generating those missing; True when they were generated now."""
    from orchestrator.state import write_text

    old = read_env(env_path)
    values = env_values(old)
    if values != old or not env_path.is_file():
        text = "# secrets for orch's stack: keep this file private (mode 0600)\n" + "".join(f"{k}={v}\n" for k, v in values.items())
        write_text(env_path, text, mode=0o600)
    elif os.stat(env_path).st_mode & 0o077:
        os.chmod(env_path, 0o600)
    return "WEBUI_ADMIN_PASSWORD" not in old


def webui_environment(doc: dict) -> dict:
    """Open WebUI's settings in a rendered document (the secrets stay in .env)."""
    return ((doc.get("services") or {}).get("open-webui") or {}).get("environment") or {}


def changed_settings(before: dict, after: dict) -> list[str]:
    """Names of the settings whose values differ between two starts."""
    return sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))


def validate_port(port: int, what: str) -> int:
    if not 1 <= port <= 65535:
        raise OrchError(f"{what} {port} is not a TCP port: pass a number from 1 to 65535")
    return port
