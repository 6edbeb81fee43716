"""Keyed API access through Open WebUI, so that Ollama itself stays on loopback.

Open WebUI authenticates, issues API keys and serves an OpenAI-compatible chat
endpoint in front of Ollama. orch turns its keys on through its admin API (the
environment settings are read only on its first start), restricts every key to
the chat and model routes, and gives each key its own service user: a member of
the group `orch-api`, which may hold a key and may read every model Ollama
serves (Open WebUI shows a non-admin user only the models with an access grant
for them). A key is revoked by deleting its user.

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


class WebUIAdmin:
    """Open WebUI's admin API, signed in as the admin orch made."""

    def __init__(self, url: str, email: str, password: str, *, timeout: float = 60):
        from orchestrator.ollama import client

        self.url = url.rstrip("/")
        self.http = client.service(self.url, timeout)
        try:
            token = self.call("POST", "/api/v1/auths/signin", {"email": email, "password": password})["token"]
        except OrchError:
            self.http.close()
            raise
        self.http.headers["Authorization"] = f"Bearer {token}"

    def __enter__(self) -> "WebUIAdmin":
        return self

    def __exit__(self, *exc) -> None:
        self.http.close()

    def call(self, method: str, path: str, body: dict | None = None, *, absent_ok: bool = False, **params):
        """The JSON answer; an OrchError naming the refusal (None for a 404 when `absent_ok`)."""
        from orchestrator.ollama import client

        try:
            r = self.http.request(method, path, json=body, params=params or None)
        except client.TransportError as e:
            raise OrchError(f"Open WebUI at {self.url} did not answer ({client.short(e)}): start the stack with orch up") from None
        if r.status_code == 404 and absent_ok:
            return None
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            raise OrchError(f"Open WebUI refused {method} {path}: HTTP {r.status_code} {str(detail)[:200]}")
        return r.json() if r.content else None

    def enable_keys(self) -> dict:
        """Turn API keys on, restricted to KEY_ROUTES (this restricts every user's keys, not only orch's)."""
        config = self.call("GET", "/api/v1/auths/admin/config")
        wanted = {"ENABLE_API_KEYS": True, "ENABLE_API_KEYS_ENDPOINT_RESTRICTIONS": True,
                  "API_KEYS_ALLOWED_ENDPOINTS": ",".join(KEY_ROUTES)}
        if any(config.get(k) != v for k, v in wanted.items()):
            config = self.call("POST", "/api/v1/auths/admin/config", config | wanted)
        return config

    def group(self) -> str:
        """The id of the group whose members may hold a key, made once."""
        for g in self.call("GET", "/api/v1/groups/"):
            if g["name"] == GROUP:
                return g["id"]
        made = self.call("POST", "/api/v1/groups/create", {"name": GROUP, "description": "orch's API service users (orch api-key)",
                                                            "permissions": {"features": {"api_keys": True}}})
        return made["id"]

    def grant_models(self, group: str) -> list[str]:
        """Let the group read every model Open WebUI lists; the ids newly granted. Other grants stay as they are."""
        granted = []
        for model in self.call("GET", "/api/models").get("data", []):
            entry = self.call("GET", "/api/v1/models/model", absent_ok=True, id=model["id"]) or {}  # 404: no entry yet
            grants = [g for g in entry.get("access_grants", []) if isinstance(g, dict)]
            ours = {"principal_type": "group", "principal_id": group, "permission": "read"}
            if any(all(g.get(k) == v for k, v in ours.items()) for g in grants):
                continue
            keep = [{k: g[k] for k in ("principal_type", "principal_id", "permission")} for g in grants]
            self.call("POST", "/api/v1/models/model/access/update", {"id": model["id"], "name": model.get("name") or model["id"],
                                                                      "access_grants": keep + [ours]})
            granted.append(model["id"])
        return granted

    def service_users(self, group: str) -> list[ServiceUser]:
        members = self.call("POST", f"/api/v1/groups/id/{group}/users") or []
        return sorted((ServiceUser(u["email"].split("@")[0], u["email"], u["id"], u.get("created_at"))
                       for u in members if u.get("email", "").endswith(f"@{DOMAIN}")), key=lambda u: u.name)

    def create_key(self, name: str, group: str) -> str:
        """A new service user NAME in the group, and its key (shown by Open WebUI once: the caller keeps it)."""
        email, password = f"{name}@{DOMAIN}", secrets.token_urlsafe(24) + "aA1!"  # never used again: the key is the credential
        user = self.call("POST", "/api/v1/auths/add", {"name": name, "email": email, "password": password, "role": "user"})
        try:
            self.call("POST", f"/api/v1/groups/id/{group}/users/add", {"user_ids": [user["id"]]})
            with WebUIAdmin(self.url, email, password) as as_user:
                return as_user.call("POST", "/api/v1/auths/api_key")["api_key"]
        except BaseException:  # a user with no key would hold the name: gone again, so that a retry can take it
            with contextlib.suppress(OrchError):
                self.delete_user(user["id"])
            raise

    def delete_user(self, user_id: str) -> None:
        self.call("DELETE", f"/api/v1/users/{user_id}")


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise BadInput(f"key name {name!r}: use lower-case letters, digits and '-', at most 40, e.g. ci-bot")
    return name


def admin(directory: Path, url: str) -> WebUIAdmin:
    env = read_env(directory / ".env")
    if "WEBUI_ADMIN_PASSWORD" not in env:
        raise OrchError(f"{directory} holds no stack with an Open WebUI admin (.env): run orch up first, or pass --dir")
    return WebUIAdmin(url, env["WEBUI_ADMIN_EMAIL"], env["WEBUI_ADMIN_PASSWORD"])


def stored(directory: Path) -> dict[str, str]:
    return read_env(directory / KEYS_FILE)


def _store(directory: Path, keys: dict[str, str]) -> None:
    text = "# Open WebUI API keys orch created (orch api-key): keep this file private (mode 0600)\n"
    write_text(directory / KEYS_FILE, text + "".join(f"{k}={v}\n" for k, v in sorted(keys.items())), mode=0o600)


def _prepared(webui: WebUIAdmin) -> str:
    """Keys on (restricted), the group made, every model granted to it: its id."""
    webui.enable_keys()
    group = webui.group()
    webui.grant_models(group)
    return group


def _new_key(webui: WebUIAdmin, group: str, directory: Path, name: str) -> str:
    if any(u.name == name for u in webui.service_users(group)):
        raise BadInput(f"a key named {name} exists: revoke it first (orch api-key revoke {name}) or choose another name")
    key = webui.create_key(name, group)
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
        return None if webui.service_users(group) else _new_key(webui, group, directory, DEFAULT_NAME)


def listing(directory: Path, url: str) -> list[dict]:
    """The keys' service users; one revoked before and back from a restore is revoked again, not listed."""
    revoke_again(directory, url)
    keys = stored(directory)
    with admin(directory, url) as webui:
        users = webui.service_users(webui.group())
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
        back = [u for u in webui.service_users(webui.group()) if u.id in ids]
        for user in back:
            webui.delete_user(user.id)
    return [u.name for u in back]


def revoke(directory: Path, url: str, name: str) -> None:
    """Delete the key's service user (and so the key), write the revocation down first, and forget the stored key."""
    check_name(name)
    with admin(directory, url) as webui:
        user = next((u for u in webui.service_users(webui.group()) if u.name == name), None)
        if user is None:
            raise BadInput(f"no key named {name}: orch api-key list shows them")
        entries = revoked(directory) + [{"name": name, "id": user.id, "at": int(time.time())}]
        write_text(directory / REVOKED_FILE, json.dumps(entries, indent=2) + "\n", mode=0o600)
        webui.delete_user(user.id)
    keys = stored(directory)
    if keys.pop(name, None) is not None:
        _store(directory, keys)
