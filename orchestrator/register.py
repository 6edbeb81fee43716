"""Stage 7 and `orch register`: hand a Modelfile and its GGUF to an Ollama server over HTTP.

The Modelfile on disk is the single source of truth: it is parsed and exactly
what it says is sent, so `ollama create NAME -f Modelfile` by hand gives the
same model. The server may be local, in a container or elsewhere: the GGUF
goes up as a blob (only when the server lacks it), then `POST /api/create`.
The blob transfer is raw httpx (the official client's create_blob has no
progress and no retry); create, show and chat go through the `ollama` client.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from orchestrator import modelfile as mf_mod
from orchestrator.errors import OrchError
from orchestrator.plan import validate_ollama_name

DEFAULT_HOST = "http://127.0.0.1:11434"
UPLOAD_ATTEMPTS = 3
CHUNK = 1 << 20
CONFIRM_PROMPT = "你好"


@dataclass
class Registration:
    name: str
    status: str  # registered | skipped | failed
    message: str
    command: str
    host: str = ""
    digest: str = ""
    uploaded: bool = False
    confirmed: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


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


def server_version(url: str, timeout: float = 3.0) -> str | None:
    import httpx

    try:
        r = httpx.get(f"{url}/api/version", timeout=timeout)
        return r.json().get("version", "unknown") if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError, AttributeError):
        return None


def manual_command(name: str, modelfile: Path, url: str) -> str:
    prefix = "" if url == DEFAULT_HOST else f"OLLAMA_HOST={url} "
    return f"{prefix}ollama create {name} -f {modelfile}"


def names_in_build(build_dir: Path) -> list[tuple[Path, str]]:
    """(Modelfile, Ollama name) for every artifact build.json lists."""
    record = _build_record(build_dir)
    if record is None:
        raise OrchError(f"{build_dir} has no build.json: pass a directory orch build wrote, or a Modelfile with --name")
    return [(build_dir / a["modelfile"], a["ollama_name"]) for a in record["artifacts"]]


def register(modelfile: Path, name: str, host: str | None = None, *, progress=None, confirm: bool = True,
             timeout: float = 300.0) -> Registration:
    """Register `modelfile` as `name`; an unreachable server is reported as skipped, never raised."""
    validate_ollama_name(name)
    modelfile = Path(modelfile).resolve()
    mf = mf_mod.parse(modelfile)
    gguf = mf.gguf
    if gguf is None or not gguf.is_file():
        raise OrchError(f"{modelfile}: FROM {mf.from_} is not a GGUF file next to it: rebuild with orch build")
    url = ollama_url(host)
    reg = Registration(name, "skipped", "", manual_command(name, modelfile, url), host=url)
    version = server_version(url)
    if version is None:
        reg.message = f"no Ollama answered at {url}: start one (ollama serve, or orch up) and run: orch register {modelfile.parent}"
        return reg

    import httpx
    import ollama

    try:
        reg.digest = _digest(gguf, progress)
        reg.uploaded = upload_blob(url, gguf, reg.digest, progress=progress, timeout=timeout)
        client = ollama.Client(host=url, timeout=timeout)
        for status in client.create(model=name, files={gguf.name: f"sha256:{reg.digest}"}, template=mf.template,
                                    system=mf.system, parameters=mf.parameters or None, license=mf.license or None,
                                    messages=mf.messages or None, stream=True):
            if progress is not None and status.status:
                progress.console.print(f"  server: {status.status}", highlight=False, soft_wrap=True)
        if confirm:
            reg.confirmed = confirm_registration(client, name, mf)
    except (ollama.ResponseError, OrchError) as e:
        reg.status, reg.message = "failed", f"Ollama {version} at {url} refused {name}: {_error_text(e)}"
        return reg
    except (httpx.HTTPError, ConnectionError) as e:
        reg.status, reg.message = "failed", f"lost Ollama at {url} while registering {name} ({type(e).__name__}): run orch register again"
        return reg
    sent = "uploaded the GGUF" if reg.uploaded else "the server already had the GGUF"
    reg.status, reg.message = "registered", f"registered with Ollama {version} at {url} ({sent}); try: orch chat {name}"
    return reg


def upload_blob(url: str, gguf: Path, digest: str, *, progress=None, timeout: float = 300.0) -> bool:
    """Upload `gguf` unless the server has it; True if it was sent. Streams from disk; retries a broken transfer."""
    import httpx

    blob = f"{url}/api/blobs/sha256:{digest}"
    with httpx.Client(timeout=httpx.Timeout(timeout, connect=10.0)) as http:
        if http.head(blob).status_code == 200:
            return False
        size = gguf.stat().st_size
        task = progress.add_task(f"upload {gguf.name}", total=size) if progress is not None else None
        for attempt in range(1, UPLOAD_ATTEMPTS + 1):
            if task is not None:
                progress.reset(task, total=size)
            try:
                r = http.post(blob, content=_read_chunks(gguf, progress, task), headers={"Content-Length": str(size)})
            except httpx.TransportError as e:
                last = type(e).__name__
            else:
                if r.status_code in (200, 201):
                    return True
                if r.status_code < 500:
                    raise OrchError(f"the server refused the upload of {gguf.name} (HTTP {r.status_code}: {_body_error(r)})")
                last = f"HTTP {r.status_code}: {_body_error(r)}"
            if attempt < UPLOAD_ATTEMPTS:
                time.sleep(attempt)
    raise OrchError(f"uploading {gguf.name} failed {UPLOAD_ATTEMPTS} times (last: {last}): "
                    "check the connection to the server and run orch register again")


def confirm_registration(client, name: str, mf) -> dict:
    """Check through /api/show that the template and parameters took, then one short /api/chat exchange."""
    shown = client.show(name)
    if mf.template is not None and (shown.template or "") != mf.template:
        raise OrchError(f"the server's template for {name} differs from the Modelfile's")
    params = shown.parameters or ""
    missing = [f"{k} {v}" for k, values in mf.parameters.items() for v in (values if isinstance(values, list) else [values])
               if k not in params or (isinstance(v, str) and v not in params)]
    if missing:
        raise OrchError(f"the server did not keep these parameters of {name}: {', '.join(missing)}")
    t = time.monotonic()
    reply = client.chat(model=name, messages=[{"role": "user", "content": CONFIRM_PROMPT}],
                        options={"num_predict": 8, "temperature": 0})
    return {"template": True, "parameters": sorted(mf.parameters), "chat_reply": reply.message.content,
            "chat_seconds": round(time.monotonic() - t, 3)}


def _digest(gguf: Path, progress=None) -> str:
    """sha256 of the GGUF: the one build.json recorded when size and name still match, else computed."""
    from orchestrator.state import sha256_file

    record = _build_record(gguf.parent) or {}
    for a in record.get("artifacts", []):
        if a.get("file") == gguf.name and a.get("size") == gguf.stat().st_size and a.get("sha256"):
            return a["sha256"]
    task = progress.add_task(f"hash {gguf.name}", total=gguf.stat().st_size) if progress is not None else None
    return sha256_file(gguf, (lambda n: progress.advance(task, n)) if task is not None else None)


def _read_chunks(path: Path, progress, task):
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            if task is not None:
                progress.advance(task, len(block))
            yield block


def _build_record(build_dir: Path) -> dict | None:
    try:
        return json.loads((Path(build_dir) / "build.json").read_text())
    except (OSError, ValueError):
        return None


def _error_text(e: Exception) -> str:
    text = getattr(e, "error", None) or str(e)
    try:
        text = json.loads(text).get("error", text)
    except (ValueError, AttributeError):
        pass
    return str(text).strip().splitlines()[0][:300] if str(text).strip() else type(e).__name__


def _body_error(r) -> str:
    try:
        return str(r.json().get("error", r.text))[:200]
    except ValueError:
        return r.text.strip()[:200] or "no body"
