"""`orch register` and the end of `orch build`: hand a Modelfile and its GGUF to an Ollama server over HTTP.

The Modelfile on disk is the single source of truth: it is parsed and exactly
what it says is sent, so `ollama create NAME -f Modelfile` by hand gives the
same model. The server may be local, in a container or elsewhere: the GGUF
goes up as a blob (only when the server lacks it), then `POST /api/create`,
then /api/show and one short /api/chat confirm what took.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from orchestrator import modelfile as mf_mod
from orchestrator import names
from orchestrator.errors import BadInput, OrchError
from orchestrator.events import SILENT, Reporter
from orchestrator.files import sha256_file
from orchestrator.ollama.client import Ollama, Refused, TransportError, error_text, manual_command

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


def names_in_build(build_dir: Path) -> list[tuple[Path, str]]:
    """(Modelfile, Ollama name) for every artifact build.json lists."""
    record = _build_record(build_dir)
    if record is None:
        raise BadInput(f"{build_dir} has no build.json: pass a directory orch build wrote, or a Modelfile with --name")
    return [(build_dir / a["modelfile"], a["ollama_name"]) for a in record["artifacts"]]


def jobs(target: Path, name: str | None = None) -> list[tuple[Path, str]]:
    """What `orch register TARGET [--name]` registers: every Modelfile of a build, or one Modelfile under its recorded or given name."""
    if name is not None:
        names.validate(name)
    if target.is_dir():
        found = names_in_build(target)
        if name is not None:
            if len(found) != 1:
                raise BadInput(f"{target} holds {len(found)} Modelfiles: pass one of them with --name")
            found = [(found[0][0], name)]
        return found
    if not target.is_file():
        raise BadInput(f"{target} does not exist: pass a build directory or a Modelfile")
    with open(target, "rb") as f:
        if f.read(4) == b"GGUF":
            raise BadInput(f"{target} is a GGUF, not a Modelfile: pass the Modelfile beside it (orch build writes NAME.Modelfile), "
                           "or the build directory")
    if name is None:
        known = {p.name: n for p, n in names_in_build(target.parent)} if (target.parent / "build.json").is_file() else {}
        if target.name not in known:
            raise BadInput(f"{target} is not listed in a build.json beside it: pass --name NAME[:TAG]")
        name = known[target.name]
    return [(target, name)]


def register(modelfile: Path, name: str, host: str | None = None, *, reporter: Reporter = SILENT, confirm: bool = True,
             timeout: float = 300.0, beside_only: bool = False, again: str | None = None) -> Registration:
    """Register `modelfile` as `name`; an unreachable server is reported as skipped, never raised.

    Only a file that is a GGUF is ever uploaded, whatever FROM names; with
    `beside_only` (what orch up registers by itself) FROM must also name a file
    in the Modelfile's own directory, as orch's Modelfiles do. `again` is what to
    do once a server runs (default: the orch register line, for a build's output).
    """
    names.validate(name)
    modelfile = Path(modelfile).resolve()
    mf = mf_mod.parse(modelfile)
    gguf = mf.gguf
    if gguf is None or not gguf.is_file():
        raise OrchError(f"{modelfile}: FROM {mf.from_} is not a GGUF file next to it: rebuild with orch build")
    if beside_only and (Path(mf.from_).expanduser().is_absolute() or gguf.parent != modelfile.parent):
        raise OrchError(f"{modelfile}: FROM {mf.from_} is not a file beside the Modelfile, as orch build writes them: "
                        "register it by hand with orch register if you trust it")
    check_gguf(gguf)
    with Ollama(host, timeout=timeout, connect=10.0) as server:
        reg = Registration(name, "skipped", "", manual_command(name, modelfile, server.url), host=server.url)
        version = server.version()
        if version is None:
            again = again or "run: " + f"orch register {modelfile} --name {name}" + (f" --host {server.url}" if host else "")
            reg.message = f"no Ollama answered at {server.url}: start one (ollama serve, or orch up), then {again}"
            return reg
        try:
            reg.digest = _digest(gguf, reporter)
            reg.uploaded = server.upload_blob(gguf, reg.digest, reporter=reporter)
            server.create(name, files={gguf.name: f"sha256:{reg.digest}"}, template=mf.template, system=mf.system,
                          parameters=mf.parameters or None, license=mf.license or None, messages=mf.messages or None,
                          on_status=lambda s: reporter.note(f"  server: {s}"))
            if confirm:
                reg.confirmed = confirm_registration(server, name, mf)
        except (Refused, OrchError) as e:
            reg.status, reg.message = "failed", f"Ollama {version} at {server.url} refused {name}: {error_text(e)}"
            return reg
        except TransportError as e:
            reg.status, reg.message = "failed", f"lost Ollama at {server.url} while registering {name} ({type(e).__name__}): run orch register again"
            return reg
    sent = "uploaded the GGUF" if reg.uploaded else "the server already had the GGUF"
    reg.status, reg.message = "registered", f"registered with Ollama {version} at {reg.host} ({sent}); try: orch chat {name}"
    return reg


def register_build(build_dir: Path, host: str | None = None, *, reporter: Reporter = SILENT) -> list[Registration]:
    """Every artifact of a build, under the names build.json records."""
    return [register(mf, name, host, reporter=reporter) for mf, name in names_in_build(build_dir)]


def confirm_registration(server: Ollama, name: str, mf) -> dict:
    """Check through /api/show that the template and parameters took, then one short /api/chat exchange."""
    shown = server.show(name)
    if mf.template is not None and (shown.template or "") != mf.template:
        raise OrchError(f"the server's template for {name} differs from the Modelfile's")
    kept = mf_mod.parse_shown_parameters(shown.parameters or "")
    differ = [f"{k} {v!r} (the server has {kept.get(k, 'none')!r})" for k, v in mf.parameters.items() if not same_value(v, kept.get(k))]
    if differ:
        raise OrchError(f"the server did not keep these parameters of {name}: {', '.join(differ)}")
    t = time.monotonic()
    reply = server.chat(name, [{"role": "user", "content": CONFIRM_PROMPT}], options={"num_predict": 8, "temperature": 0})
    return {"template": True, "parameters": sorted(mf.parameters), "chat_reply": reply.message.content,
            "chat_seconds": round(time.monotonic() - t, 3)}


def check_gguf(path: Path) -> None:
    """Refuse to upload anything that is not a GGUF (a FROM naming ~/.aws/credentials): orch inspect's bounded reader decides."""
    from orchestrator.builder.gguf_check import open_gguf

    open_gguf(path)


def same_value(want, got) -> bool:
    """A parameter's value as sent and as shown (Ollama keeps floats as float32, so 0.3 comes back as 0.30000001)."""
    if isinstance(want, list):
        return isinstance(got, list) and len(want) == len(got) and all(same_value(w, g) for w, g in zip(want, got))
    if isinstance(want, float) and isinstance(got, (int, float)):
        return math.isclose(want, got, rel_tol=1e-6)
    return want == got and type(want) is type(got)


def _digest(gguf: Path, reporter: Reporter) -> str:
    """sha256 of the GGUF: the one build.json recorded while the file is the one it was written as (name, size, mtime
    and inode), else computed: a GGUF replaced by another of the same size is never sent as the old one's blob."""
    record = _build_record(gguf.parent) or {}
    st = gguf.stat()
    for a in record.get("artifacts", []):
        if (a.get("file") == gguf.name and a.get("sha256") and (a.get("size"), a.get("mtime_ns"), a.get("inode"))
                == (st.st_size, st.st_mtime_ns, st.st_ino)):
            return a["sha256"]
    with reporter.task(f"hash {gguf.name}", total=gguf.stat().st_size) as task:
        return sha256_file(gguf, task.advance)


def _build_record(build_dir: Path) -> dict | None:
    try:
        return json.loads((Path(build_dir) / "build.json").read_text())
    except (OSError, ValueError):
        return None
