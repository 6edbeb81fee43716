"""Stage 7: hand a built Modelfile to Ollama.

This first version shells out to `ollama create -f` (which uploads the GGUF
to whichever server OLLAMA_HOST names). Without a reachable server it says so
and leaves the build intact: registering later is one command.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOST = "http://127.0.0.1:11434"


@dataclass
class Registration:
    name: str
    status: str  # registered | skipped | failed
    message: str
    command: str


def ollama_url(host: str | None = None) -> str:
    """--host, else OLLAMA_HOST (which may be a bare host or host:port, as Ollama accepts), else the default."""
    raw = (host or os.environ.get("OLLAMA_HOST") or DEFAULT_HOST).strip().rstrip("/")
    if "://" not in raw:
        raw = "http://" + raw
    scheme, rest = raw.split("://", 1)
    hostport = rest.split("/", 1)[0]
    if hostport.startswith("0.0.0.0"):
        hostport = hostport.replace("0.0.0.0", "127.0.0.1", 1)
    if ":" not in hostport.rsplit("]", 1)[-1]:
        hostport += ":11434"
    return f"{scheme}://{hostport}"


def server_version(url: str, timeout: float = 2.0) -> str | None:
    try:
        with urllib.request.urlopen(f"{url}/api/version", timeout=timeout) as resp:
            return json.loads(resp.read() or b"{}").get("version", "unknown")
    except (urllib.error.URLError, OSError, ValueError):
        return None


def register(modelfile: Path, name: str, host: str | None = None) -> Registration:
    url = ollama_url(host)
    manual = f"ollama create {name} -f {modelfile}"
    version = server_version(url)
    if version is None:
        return Registration(name, "skipped", f"no Ollama answered at {url}: start one (ollama serve) and run: {manual}", manual)
    cli = shutil.which("ollama")
    if cli is None:
        return Registration(name, "skipped", f"Ollama {version} answers at {url}, but the ollama CLI is not on PATH: "
                                             f"run from a machine that has it: OLLAMA_HOST={url} {manual}", manual)
    proc = subprocess.run([cli, "create", name, "-f", str(modelfile)], capture_output=True, text=True,
                          env=os.environ | {"OLLAMA_HOST": url}, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        last = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1]
        return Registration(name, "failed", f"ollama create {name} failed: {last}", manual)
    return Registration(name, "registered", f"registered as {name} with Ollama {version} at {url}", manual)
