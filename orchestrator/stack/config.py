"""What a stack is, whatever runs it: the plan, the pinned images, and the secrets kept in its .env.

Planning is pure; write_env is the only part that touches disk. Secrets are
generated once and kept across runs: Open WebUI signs sessions with
WEBUI_SECRET_KEY, and a new one logs everyone out.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.errors import BadInput
from orchestrator.files import write_text

from orchestrator.settings import OLLAMA_VERSION, PYTHON_IMAGE, WEBUI_VERSION  # noqa: F401  pinned there, used here and by the manifests

OLLAMA_IMAGE = f"ollama/ollama:{OLLAMA_VERSION}"
WEBUI_IMAGE = f"ghcr.io/open-webui/open-webui:v{WEBUI_VERSION}"


def webui_version() -> str:
    """The pinned Open WebUI release, unless $ORCH_WEBUI_VERSION names another (held back, or tried ahead), for every
    runtime: the native one installs it, the docker one runs its image."""
    import re

    from orchestrator import settings

    version = settings.webui_version()
    if not re.fullmatch(r"[0-9]+(\.[0-9]+){1,3}", version):
        raise BadInput(f"{settings.WEBUI_VERSION_ENV}={version!r} is not an Open WebUI release such as {WEBUI_VERSION}")
    return version


def pinned_images(registry: str | None = None) -> dict:
    """The pinned images (Open WebUI's release as webui_version says), from Docker Hub and ghcr.io, or by the same paths
    through a registry mirror (--registry, e.g. docker.m.daocloud.io: REGISTRY/ollama/ollama and
    REGISTRY/open-webui/open-webui)."""
    webui = f"ghcr.io/open-webui/open-webui:v{webui_version()}"
    if not registry:
        return {"ollama": OLLAMA_IMAGE, "open-webui": webui}
    mirror = registry.strip().removeprefix("https://").removeprefix("http://").rstrip("/")
    if not mirror or any(c in mirror for c in " :@") and not mirror.rsplit(":", 1)[-1].isdigit():
        raise BadInput(f"--registry {registry!r}: name a registry host, e.g. docker.m.daocloud.io or mirror.example.com:5000")
    return {"ollama": f"{mirror}/{OLLAMA_IMAGE}", "open-webui": f"{mirror}/{webui.removeprefix('ghcr.io/')}"}
SERVICES = ("ollama", "open-webui")  # what orch logs SERVICE names on one box


def known_services(asked: list[str] | None, known: tuple[str, ...] = SERVICES) -> None:
    """Refuse a service name the stack does not run, in one line naming those it does."""
    for name in asked or []:
        if name not in known:
            raise BadInput(f"no service named {name!r}: pass one of {', '.join(known)}")


ADMIN_EMAIL = "admin@orch.local"
SECRET_KEYS = ("WEBUI_SECRET_KEY", "WEBUI_ADMIN_EMAIL", "WEBUI_ADMIN_PASSWORD")  # in .env only
# read by Open WebUI only on its first start (it then keeps them in its database)
FIRST_START_ONLY = ("DEFAULT_MODELS", "ENABLE_SIGNUP", "ENABLE_OPENAI_API", "DEFAULT_MODEL_PARAMS")


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
    webui: bool = True  # False: Ollama alone, a headless API box
    backup: bool = True  # a backup before Open WebUI changes (its release or install), rolled back to when it fails
    api: bool = False  # Open WebUI's API keys on, and a key for a service user (stack/api_keys.py)
    images: dict = field(default_factory=lambda: pinned_images())
    registry: str | None = None  # a registry mirror the images come through (--registry); None: Docker Hub and ghcr.io

    def __post_init__(self):
        if self.registry is not None:
            object.__setattr__(self, "images", pinned_images(self.registry))
        validate_port(self.port, "--port")
        validate_port(self.ollama_port, "--ollama-port")
        if not self.webui and self.ollama_url:
            raise BadInput("--no-webui with --host leaves nothing to start: drop one of them")
        if self.api and not self.webui:
            raise BadInput("--api issues keys through Open WebUI: drop --no-webui (Ollama itself has no keys)")

    @property
    def local_webui_url(self) -> str | None:
        """Where this host reaches Open WebUI (loopback unless it is bound to one address only); None without it."""
        if not self.webui:
            return None
        host = "127.0.0.1" if self.bind in ("0.0.0.0", "::", "127.0.0.1") else self.bind
        return f"http://{host}:{self.port}"

    @property
    def local_ollama_url(self) -> str:
        """Where this host reaches the stack's Ollama: the --host given, else its published port."""
        return self.ollama_url or f"http://127.0.0.1:{self.ollama_port}"

    @property
    def ollama_bind(self) -> str:
        return "0.0.0.0" if self.expose_ollama else "127.0.0.1"

    def warnings(self, runtime: str = "docker") -> list[str]:
        """What the user should know before it starts; the firewall note is Docker's alone (its ports bypass ufw)."""
        bypass = "; Docker's published ports bypass host firewalls such as ufw" if runtime == "docker" else ""
        out = []
        if self.expose_ollama:
            out.append(f"Ollama will answer on every interface at port {self.ollama_port} with no authentication{bypass}")
        if self.bind == "0.0.0.0" and self.webui:
            out.append(f"Open WebUI listens on every interface at port {self.port} (it has sign-in{bypass}): "
                       "pass --bind 127.0.0.1 to keep it on this machine")
        if self.api and self.bind not in ("127.0.0.1", "::1", "localhost"):
            out.append(f"API keys and chats cross the network in plain HTTP at port {self.port}: put TLS in front of it (a "
                       "reverse proxy such as Caddy or nginx, or an Ingress), or --bind 127.0.0.1 and an SSH tunnel")
        return out


def validate_port(port: int, what: str) -> int:
    if not 1 <= port <= 65535:
        raise BadInput(f"{what} {port} is not a TCP port: pass a number from 1 to 65535")
    return port


def env_values(existing: dict[str, str]) -> dict[str, str]:
    """The .env: the secret key and admin account, generated once and then kept as they are."""
    values = dict(existing)
    values.setdefault("WEBUI_SECRET_KEY", secrets.token_urlsafe(48))
    values.setdefault("WEBUI_ADMIN_EMAIL", ADMIN_EMAIL)
    values.setdefault("WEBUI_ADMIN_PASSWORD", secrets.token_urlsafe(18))
    return values


def read_env(path: Path) -> dict[str, str]:
    return parse_env(path.read_text(encoding="utf-8")) if path.is_file() else {}


def parse_env(text: str) -> dict[str, str]:
    values = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip().strip("'\"")
    return values


def write_env(env_path: Path) -> bool:
    """Write an env file of the secrets (the stack's .env, the k8s Secret's), 0600, generating those missing; True when generated now."""
    old = read_env(env_path)
    values = env_values(old)
    if values != old or not env_path.is_file():
        text = "# secrets for orch's stack: keep this file private (mode 0600)\n" + "".join(f"{k}={v}\n" for k, v in values.items())
        write_text(env_path, text, mode=0o600)
    elif os.stat(env_path).st_mode & 0o077:
        os.chmod(env_path, 0o600)
    return "WEBUI_ADMIN_PASSWORD" not in old


def changed_settings(before: dict, after: dict) -> list[str]:
    """Names of the settings whose values differ between two starts."""
    return sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
