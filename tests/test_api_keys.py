"""Keyed API access through Open WebUI (orch up --api, orch api-key), with Ollama on loopback throughout.

Real servers: the real Ollama (built from source) and the real Open WebUI from PyPI, under the native runtime.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess

import httpx
import psutil
import pytest

from orchestrator.stack import api_keys
from orchestrator.stack.config import read_env
from support import free_port, orch
from test_up_native import pid_of, quiet_background_generation


def non_loopback_addresses() -> list[str]:
    return sorted({a.address for addrs in psutil.net_if_addrs().values() for a in addrs
                   if a.family == socket.AF_INET and not a.address.startswith("127.")})


def answers_on(addr: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((addr, port)) == 0


@pytest.mark.timeout(1500)
def test_a_key_reaches_the_model_through_open_webui_and_nothing_else(real_ollama_on_path, tiny_build, webui_env, tmp_path,
                                                                     isolated_home):
    from openai import AuthenticationError, OpenAI

    shutil.copytree(tiny_build, isolated_home / "data" / "orch" / "builds" / "tiny")  # orch up registers it
    model = json.loads((tiny_build / "build.json").read_text())["artifacts"][0]["ollama_name"]
    stack, port, ollama_port = tmp_path / "stack", free_port(), free_port()
    up = ["up", "--runtime", "native", "--offline", "--bind", "127.0.0.1", "--port", str(port), "--ollama-port", str(ollama_port),
          "--model", model, "--dir", str(stack), "--wait", "300", "--api"]
    first = orch(*up, timeout=1400, check=False)
    try:
        assert first.returncode == 0, first.stdout + first.stderr
        webui, keys_file = f"http://127.0.0.1:{port}", stack / api_keys.KEYS_FILE
        key = read_env(keys_file)[api_keys.DEFAULT_NAME]
        assert f"API key (shown once, kept in {keys_file}): {key}" in first.stdout
        assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
        env = read_env(stack / ".env")
        quiet_background_generation(webui, env["WEBUI_ADMIN_EMAIL"], env["WEBUI_ADMIN_PASSWORD"])

        # the key, as the README's openai client uses it from another machine
        client = OpenAI(base_url=f"{webui}/api", api_key=key)
        assert model in [m.id for m in client.models.list()], "the service user sees the registered model"
        reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "你好"}], max_tokens=8)
        assert reply.choices[0].message.content.strip()

        def status(path: str, key: str | None, method: str = "GET") -> int:
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            body = {"model": model, "messages": [{"role": "user", "content": "你好"}], "max_tokens": 4} if method == "POST" else None
            return httpx.request(method, f"{webui}{path}", headers=headers, json=body, timeout=120).status_code

        assert status("/api/chat/completions", None, "POST") == 401, "no key"
        assert status("/api/chat/completions", "sk-" + "0" * 32, "POST") == 401, "a wrong key"
        for admin_route in ("/api/v1/auths/admin/config", "/api/v1/users/", "/api/v1/configs/export", "/ollama/api/tags"):
            assert status(admin_route, key) == 403, f"the key reaches {admin_route}"

        report = json.loads(orch("health", "--host", f"http://127.0.0.1:{ollama_port}", "--model", model, "--webui", webui,
                                 "--json", env={"ORCH_API_KEY": key}).stdout)
        api = next(c for c in report["checks"] if c["name"] == "api")
        assert api["status"] == "ok" and model in api["reason"], api

        # an admin's private workspace model (its own prompt) on top of the registered one: never granted to the keys
        admin = httpx.post(f"{webui}/api/v1/auths/signin", json={"email": env["WEBUI_ADMIN_EMAIL"],
                                                                   "password": env["WEBUI_ADMIN_PASSWORD"]}, timeout=60).json()["token"]
        private = httpx.post(f"{webui}/api/v1/models/create", headers={"Authorization": f"Bearer {admin}"}, timeout=60,
                             json={"id": "private-notes", "base_model_id": model, "name": "Private notes", "meta": {},
                                   "params": {"system": "the admin's own notes"}, "access_grants": []})
        assert private.status_code == 200, private.text

        # a second key, listed, then revoked: refused at once, the first one unaffected
        made = json.loads(orch("api-key", "create", "ci-bot", "--dir", str(stack), "--json").stdout)
        seen = [m.id for m in OpenAI(base_url=f"{webui}/api", api_key=made["key"]).models.list()]
        assert model in seen and "private-notes" not in seen, seen
        assert read_env(keys_file) == {api_keys.DEFAULT_NAME: key, "ci-bot": made["key"]}
        assert status("/api/chat/completions", made["key"], "POST") == 200
        listed = json.loads(orch("api-key", "list", "--dir", str(stack), "--json").stdout)
        assert [(k["name"], k["stored"]) for k in listed] == [("ci-bot", True), (api_keys.DEFAULT_NAME, True)]
        again = orch("api-key", "create", "ci-bot", "--dir", str(stack), check=False)
        assert again.returncode == 2 and "a key named ci-bot exists" in again.stderr
        archive = orch("backup", "--dir", str(stack)).stdout.split(" to ", 1)[1].split(" (", 1)[0]  # ci-bot's key is in it
        orch("api-key", "revoke", "ci-bot", "--dir", str(stack))
        with pytest.raises(AuthenticationError):
            OpenAI(base_url=f"{webui}/api", api_key=made["key"]).models.list()
        assert "ci-bot" not in read_env(keys_file) and status("/api/chat/completions", key, "POST") == 200
        revoked = json.loads(orch("health", "--webui", webui, "--host", f"http://127.0.0.1:{ollama_port}", "--model", model,
                                  "--api-key", made["key"], "--json", check=False).stdout)
        assert next(c for c in revoked["checks"] if c["name"] == "api")["status"] == "fail"

        # the backup from before the revocation restored, and orch up --api again: the revoked key stays revoked,
        # nothing new is shown, the first key still works
        orch("down", "--dir", str(stack))
        orch("restore", archive, "--dir", str(stack))
        rerun = orch(*up, timeout=600)
        assert "key ci-bot was revoked after the backup this stack was restored from: revoked again" in rerun.stdout, rerun.stdout
        assert status("/api/chat/completions", made["key"], "POST") == 401, "a key revoked after the backup came back"
        listed = json.loads(orch("api-key", "list", "--dir", str(stack), "--json").stdout)
        assert [k["name"] for k in listed] == [api_keys.DEFAULT_NAME]
        assert "API key (shown once" not in rerun.stdout

        # what orch api-key create prints, pasted into a shell as it is, gets an answer
        printed = orch("api-key", "create", "paste-bot", "--dir", str(stack)).stdout.splitlines()
        pasted = [ln for ln in printed if ln.startswith(("export ORCH_API_KEY=", "curl "))]
        assert len(pasted) == 2 and f'"model": "{model}"' in pasted[1], printed
        answer = subprocess.run(["bash", "-c", "\n".join(pasted)], capture_output=True, text=True, timeout=300,
                                env={k: v for k, v in os.environ.items() if k != "ORCH_API_KEY"})
        assert json.loads(answer.stdout)["choices"][0]["message"]["content"], answer.stdout + answer.stderr
        orch("api-key", "revoke", "paste-bot", "--dir", str(stack))
        assert status("/api/chat/completions", key, "POST") == 200, "the first key outlives another's revocation"

        # and Ollama itself answered only on loopback all along
        ollama_pid = pid_of(stack, "ollama")
        listens = {c.laddr.ip for c in psutil.Process(ollama_pid).net_connections("tcp") if c.status == psutil.CONN_LISTEN}
        assert listens == {"127.0.0.1"}, listens
        assert not any(answers_on(addr, ollama_port) for addr in non_loopback_addresses())
    finally:
        orch("down", "--dir", str(stack), check=False)
