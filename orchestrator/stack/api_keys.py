"""Keyed API access through Open WebUI, so that Ollama itself stays on loopback.

Open WebUI authenticates, issues API keys and serves an OpenAI-compatible chat
endpoint in front of Ollama. orch turns its keys on through its admin API (the
environment settings are read only on its first start), restricts every key to
the chat and model routes, and gives each key its own service user: a member of
the group `orch-api`, which may hold a key and may read the models Ollama
serves (Open WebUI shows a non-admin user only the models with an access grant
for them), never a user's workspace model. A key is revoked by deleting its user.

Open WebUI holds one key per user, so a key's name is its user's.

A revocation is also written down outside Open WebUI's database (revoked-keys.json,
never in a backup): a restore brings back the database as it was, users and keys
and all, and orch up revokes again every key revoked since.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from orchestrator.errors import BadInput, OrchError
from orchestrator.files import write_text
from orchestrator.stack.config import read_env
from orchestrator.webui.client import Admin, served_by_ollama

GROUP = "orch-api"
DOMAIN = "orch.local"  # service users' e-mail addresses: NAME@orch.local
KEY_ROUTES = ("/api/chat/completions", "/api/v1/chat/completions", "/api/models")  # all a key may reach
KEYS_FILE = "api-keys.env"  # in the stack directory, 0600: the keys orch created, by name
REVOKED_FILE = "revoked-keys.json"  # in the stack directory, 0600, in no backup: the service users whose keys were revoked
NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
DEFAULT_NAME = "orch-api"


@dataclass(frozen=True)
class ServiceUser:
    name: str
    email: str
    id: str
    created_at: int | None = None


def _enable_keys(webui: Admin) -> dict:
    """Turn API keys on, restricted to KEY_ROUTES (this restricts every user's keys, not only orch's)."""
    config = webui.config()
    wanted = {"ENABLE_API_KEYS": True, "ENABLE_API_KEYS_ENDPOINT_RESTRICTIONS": True, "API_KEYS_ALLOWED_ENDPOINTS": ",".join(KEY_ROUTES)}
    if any(config.get(k) != v for k, v in wanted.items()):
        config = webui.set_config(config | wanted)
    return config


def _group(webui: Admin) -> str:
    return webui.group_id(GROUP, description="orch's API service users (orch api-key)", features={"api_keys": True})


def _grant_models(webui: Admin, group: str) -> list[str]:
    """Let the group read every model Ollama serves (what orch registered), and nothing else: a workspace model, with its
    owner's prompt and knowledge, stays its owner's. The ids newly granted."""
    return [m["id"] for m in webui.models() if served_by_ollama(m) and webui.grant_read(m["id"], m.get("name") or m["id"], group)]


def _service_users(webui: Admin, group: str) -> list[ServiceUser]:
    return sorted((ServiceUser(m.email.split("@")[0], m.email, m.id, m.created_at) for m in webui.members(group)
                   if m.email.endswith(f"@{DOMAIN}")), key=lambda u: u.name)


def _create_key(webui: Admin, name: str, group: str) -> str:
    """A new service user NAME in the group, and its key; a user whose key could not be made is deleted again, so that a
    retry can take the name."""
    email, password = f"{name}@{DOMAIN}", secrets.token_urlsafe(24) + "aA1!"  # never used again: the key is the credential
    user = webui.add_user(name, email, password, group)
    try:
        with Admin(webui.url, email, password) as as_user:
            return as_user.new_key()
    except BaseException:
        with contextlib.suppress(OrchError):
            webui.delete_user(user)
        raise


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise BadInput(f"key name {name!r}: use lower-case letters, digits and '-', at most 40, e.g. ci-bot")
    return name


def admin(directory: Path, url: str) -> Admin:
    env = read_env(directory / ".env")
    if "WEBUI_ADMIN_PASSWORD" not in env:
        raise OrchError(f"{directory} holds no stack with an Open WebUI admin (.env): run orch up first, or pass --dir")
    return Admin(url, env["WEBUI_ADMIN_EMAIL"], env["WEBUI_ADMIN_PASSWORD"])


def stored(directory: Path) -> dict[str, str]:
    return read_env(directory / KEYS_FILE)


def _store(directory: Path, keys: dict[str, str]) -> None:
    text = "# Open WebUI API keys orch created (orch api-key): keep this file private (mode 0600)\n"
    write_text(directory / KEYS_FILE, text + "".join(f"{k}={v}\n" for k, v in sorted(keys.items())), mode=0o600)


def _prepared(webui: Admin) -> str:
    """Keys on (restricted), the group made, every Ollama model granted to it: its id."""
    _enable_keys(webui)
    group = _group(webui)
    _grant_models(webui, group)
    return group


def _new_key(webui: Admin, group: str, directory: Path, name: str) -> str:
    if any(u.name == name for u in _service_users(webui, group)):
        raise BadInput(f"a key named {name} exists: revoke it first (orch api-key revoke {name}) or choose another name")
    key = _create_key(webui, name, group)
    _store(directory, stored(directory) | {name: key})
    return key


def create(directory: Path, url: str, name: str = DEFAULT_NAME) -> str:
    """A new key NAME (stored 0600 in the stack), with keys, the group and its grants in place; the key."""
    check_name(name)
    with admin(directory, url) as webui:
        return _new_key(webui, _prepared(webui), directory, name)


def ensure(directory: Path, url: str) -> str | None:
    """What `orch up --api` does on every run: keys on, every model granted; a first key when none exists (returned once)."""
    with admin(directory, url) as webui:
        group = _prepared(webui)
        return None if _service_users(webui, group) else _new_key(webui, group, directory, DEFAULT_NAME)


def listing(directory: Path, url: str) -> list[dict]:
    """The keys' service users; one revoked before and back from a restore is revoked again, not listed."""
    revoke_again(directory, url)
    keys = stored(directory)
    with admin(directory, url) as webui:
        users = _service_users(webui, _group(webui))
    return [asdict(u) | {"stored": u.name in keys} for u in users]


def revoked(directory: Path) -> list[dict]:
    """The revocations on record: [{"name", "id", "at"}]."""
    try:
        entries = json.loads((directory / REVOKED_FILE).read_text())
        return [e for e in entries if isinstance(e, dict) and isinstance(e.get("id"), str)]
    except (OSError, ValueError, TypeError):
        return []


def revoke_again(directory: Path, url: str) -> list[str]:
    """Delete every service user whose key was revoked and is back (a restore of a backup older than the revocation):
    the names revoked again."""
    ids = {e["id"] for e in revoked(directory)}
    if not ids:
        return []
    with admin(directory, url) as webui:
        back = [u for u in _service_users(webui, _group(webui)) if u.id in ids]
        for user in back:
            webui.delete_user(user.id)
    return [u.name for u in back]


def revoke(directory: Path, url: str, name: str) -> None:
    """Delete the key's service user (and so the key), write the revocation down first, and forget the stored key."""
    check_name(name)
    with admin(directory, url) as webui:
        user = next((u for u in _service_users(webui, _group(webui)) if u.name == name), None)
        if user is None:
            raise BadInput(f"no key named {name}: orch api-key list shows them")
        entries = revoked(directory) + [{"name": name, "id": user.id, "at": int(time.time())}]
        write_text(directory / REVOKED_FILE, json.dumps(entries, indent=2) + "\n", mode=0o600)
        webui.delete_user(user.id)
    keys = stored(directory)
    if keys.pop(name, None) is not None:
        _store(directory, keys)
