"""The Open WebUI client: its health, the keyed OpenAI chat, and an admin session (keys, groups, users, grants).

Everything orch knows of Open WebUI's API lives here, on orchestrator.transport, so
its answers are bounded and its errors said one way: Refused (an error
status), BadAnswer (not Open WebUI's API), TransportError (no answer).
What orch does with keys (names, the group, what is granted) is
stack/api_keys.py's.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from orchestrator import transport
from orchestrator.errors import OrchError
from orchestrator.transport import BadAnswer, Refused

CHAT_PATH = "/api/chat/completions"


@dataclass(frozen=True)
class Member:
    email: str
    id: str
    created_at: int | None = None


def health(url: str, seconds: float = 5.0, auth: tuple[str, str] | None = None) -> None:
    """Open WebUI's /health says status: true, within `seconds`; else Refused, BadAnswer or TransportError."""
    what = f"Open WebUI {url.rstrip('/')}/health"
    r = transport.get(url.rstrip("/") + "/health", bounds=transport.PROBE.within(seconds), auth=auth)
    if transport.json_object(r, what).get("status") is not True:
        raise BadAnswer(f"{what} says {r.text[:100]}")


def keyed_chat(url: str, key: str, model: str, messages: list[dict], *, max_tokens: int, seconds: float) -> str:
    """What a script holding an API key gets: an OpenAI chat completion's text, through Open WebUI."""
    r = transport.post_json(url.rstrip("/") + CHAT_PATH, {"model": model, "messages": messages, "max_tokens": max_tokens,
                                                     "temperature": 0, "stream": False},
                       bounds=transport.Bounds(read=seconds, total=seconds), headers={"Authorization": f"Bearer {key}"})
    if r.status_code in (401, 403):
        raise Refused(r.status_code, f"Open WebUI refused the API key (HTTP {r.status_code}): it was revoked or mistyped, or keys "
                                     "are off (orch up --api; orch api-key list)")
    try:
        content = transport.json_object(r, CHAT_PATH)["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise BadAnswer(f"{CHAT_PATH} answered without choices[0].message.content") from None
    if not str(content).strip():
        raise BadAnswer(f"{CHAT_PATH} returned an empty reply")
    return str(content)


def _grants(grants: list[dict]) -> list[dict]:
    """Access grants as Open WebUI takes them back (it lists more fields than it accepts)."""
    return [{k: g[k] for k in ("principal_type", "principal_id", "permission")} for g in grants]


def served_by_ollama(model: dict) -> bool:
    """A model Ollama itself serves, as Open WebUI lists it: not a workspace preset (a user's model with its own prompt and
    knowledge), an arena, a pipe or an OpenAI connection's."""
    return isinstance(model.get("ollama"), dict) and not model.get("preset") and not (model.get("info") or {}).get("base_model_id")


class Admin:
    """Open WebUI's admin API, signed in as one user (the admin orch made, or a service user for its own key)."""

    def __init__(self, url: str, email: str, password: str, *, timeout: float = 60):
        self.url = url.rstrip("/")
        self.http = transport.session(self.url, bounds=transport.Bounds(read=timeout, total=timeout))
        try:
            token = self.call("POST", "/api/v1/auths/signin", {"email": email, "password": password})["token"]
        except (OrchError, KeyError, TypeError):
            self.http.close()
            raise
        self.http.headers["Authorization"] = f"Bearer {token}"

    def __enter__(self) -> "Admin":
        return self

    def __exit__(self, *exc) -> None:
        self.http.close()

    def call(self, method: str, path: str, body: dict | None = None, *, absent_ok: bool = False, **params):
        """The JSON answer; an OrchError naming the refusal (None for a 404 when `absent_ok`)."""
        try:
            r = self.http.request(method, path, json=body, params=params or None)
        except transport.TransportError as e:
            raise OrchError(f"Open WebUI at {self.url} did not answer ({transport.explain(e, 'start the stack with orch up')})") from None
        if r.status_code == 404 and absent_ok:
            return None
        if r.status_code >= 400:
            raise Refused(r.status_code, f"Open WebUI refused {method} {path}: HTTP {r.status_code} {transport.body_error(r)}")
        try:
            return r.json() if r.content else None
        except ValueError:
            raise BadAnswer(f"Open WebUI answered {method} {path} with {transport.kind(r)}, not JSON: is {self.url} Open WebUI?") from None

    def config(self) -> dict:
        return self.call("GET", "/api/v1/auths/admin/config")

    def set_config(self, config: dict) -> dict:
        return self.call("POST", "/api/v1/auths/admin/config", config)

    def group_id(self, name: str, *, description: str, features: dict) -> str:
        """The id of the group `name`, made once with these feature permissions."""
        for g in self.call("GET", "/api/v1/groups/"):
            if g["name"] == name:
                return g["id"]
        return self.call("POST", "/api/v1/groups/create", {"name": name, "description": description,
                                                           "permissions": {"features": features}})["id"]

    def models(self) -> list[dict]:
        return self.call("GET", "/api/models").get("data", [])

    def grant_read(self, model_id: str, name: str, group: str) -> bool:
        """Let `group` read the model; False when it already may. Other grants stay as they are."""
        entry = self.call("GET", "/api/v1/models/model", absent_ok=True, id=model_id) or {}  # 404: no entry yet
        grants = [g for g in entry.get("access_grants", []) if isinstance(g, dict)]
        ours = {"principal_type": "group", "principal_id": group, "permission": "read"}
        if any(all(g.get(k) == v for k, v in ours.items()) for g in grants):
            return False
        keep = _grants(grants)
        self.call("POST", "/api/v1/models/model/access/update", {"id": model_id, "name": name, "access_grants": keep + [ours]})
        return True

    def describe(self, model_id: str, description: str) -> None:
        """Give the model `description` in the chat's model list, unless it has one (a user's own is kept). Who may read
        the model stays as it was (an entry made here grants no one new)."""
        entry = self.call("GET", "/api/v1/models/model", absent_ok=True, id=model_id)  # 404: no entry yet
        if entry is None:
            self.call("POST", "/api/v1/models/create", {"id": model_id, "name": model_id, "meta": {"description": description},
                                                        "params": {}, "access_grants": []})
        elif not (entry.get("meta") or {}).get("description"):
            self.call("POST", "/api/v1/models/model/update", {
                "id": model_id, "name": entry.get("name") or model_id, "base_model_id": entry.get("base_model_id"),
                "meta": (entry.get("meta") or {}) | {"description": description}, "params": entry.get("params") or {},
                "access_grants": _grants([g for g in entry.get("access_grants", []) if isinstance(g, dict)])})

    def members(self, group: str) -> list[Member]:
        return [Member(u["email"], u["id"], u.get("created_at")) for u in self.call("POST", f"/api/v1/groups/id/{group}/users") or []
                if isinstance(u, dict) and u.get("email")]

    def add_user(self, name: str, email: str, password: str, group: str) -> str:
        """A new user with role `user` in `group`: its id. Gone again when it cannot join the group."""
        user = self.call("POST", "/api/v1/auths/add", {"name": name, "email": email, "password": password, "role": "user"})
        try:
            self.call("POST", f"/api/v1/groups/id/{group}/users/add", {"user_ids": [user["id"]]})
        except BaseException:
            with contextlib.suppress(OrchError):
                self.delete_user(user["id"])
            raise
        return user["id"]

    def new_key(self) -> str:
        """A new API key for the signed-in user (Open WebUI shows it once: the caller keeps it)."""
        return self.call("POST", "/api/v1/auths/api_key")["api_key"]

    def delete_user(self, user_id: str) -> None:
        self.call("DELETE", f"/api/v1/users/{user_id}")
