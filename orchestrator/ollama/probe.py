"""`orch health`: probe an Ollama server the way a user meets it, and say in plain words what is wrong.

Each check yields ok, degraded or fail with its latency and a reason. Probes
are cheap (a few tokens at temperature 0, the server's own keep-alive, one
request in flight at a time). Streamed answers are read by the client's
read_stream, which times the first token and tells a malformed line, an error
line and a cut stream apart.
"""

from __future__ import annotations

import re
import socket
import time
from dataclasses import asdict, dataclass, field
from urllib.parse import urlparse

from orchestrator import names
from orchestrator.transport import BadAnswer, Refused, json_object, kind, split_credentials
from orchestrator.ollama import client
from orchestrator.ollama.client import Ollama, body_error
from orchestrator.webui import client as webui

OK, DEGRADED, FAIL, SKIPPED = "ok", "degraded", "fail", "skipped"
ALWAYS_LEAKS = ("</s>", "<s>", "<unk>")
PROBE_TOKENS = 8
CHAT = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！有什么可以帮你？"},
        {"role": "user", "content": "用一句话介绍你自己。"}]


@dataclass
class Check:
    name: str
    status: str
    reason: str
    latency_ms: float | None = None
    data: dict = field(default_factory=dict)


@dataclass
class Report:
    host: str
    model: str | None
    checks: list[Check]
    started: float  # wall clock, epoch seconds
    seconds: float

    @property
    def failed(self) -> bool:
        return any(c.status == FAIL for c in self.checks)

    def check(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)

    def as_dict(self) -> dict:
        return {"host": self.host, "model": self.model, "ok": not self.failed, "time": round(self.started, 3),
                "seconds": round(self.seconds, 3), "checks": [asdict(c) for c in self.checks]}


@dataclass
class Probe:
    """What to probe (host None: $OLLAMA_HOST or the default). `timeout` bounds each request; `slow` is when a first token counts as degraded."""

    host: str | None
    model: str | None = None
    webui: str | None = None
    openai: bool = False
    timeout: float = 30.0
    slow: float = 10.0
    cve_feed: str = "builtin"  # or "osv" (cve_feed.py)
    api_key: str | None = None  # probe the keyed path too: an OpenAI chat completion through Open WebUI (orch up --api)


class ProbeError(Exception):
    """A check's failure, already in plain words."""


def probe(p: Probe) -> Report:
    started, t0 = time.time(), time.monotonic()
    checks: list[Check] = []
    model = p.model
    with Ollama(p.host, timeout=p.timeout) as http:
        server = _run("server", lambda: _server(http), checks)
        if server.status == FAIL:
            for name in ("version", "model", "generate", "chat") + (("openai",) if p.openai else ()):
                checks.append(Check(name, SKIPPED, "the server did not answer"))
        else:
            _run("version", lambda: _version(http, p.cve_feed), checks)
            found = _run("model", lambda: _model(http, p.model), checks)
            model = found.data.get("model", p.model)
            if found.status == FAIL:
                for name in ("generate", "chat") + (("openai",) if p.openai else ()):
                    checks.append(Check(name, SKIPPED, "no model to probe"))
            else:
                _run("generate", lambda: _generate(http, model, p), checks)
                _run("chat", lambda: _chat(http, model, p), checks)
                if p.openai:
                    _run("openai", lambda: _openai(http, model), checks)
                _run("placement", lambda: _placement(http, model), checks)
            exposure = _run("exposure", lambda: _exposure(http.url), checks)
            _judge_unpatched(checks, exposure)
    if p.webui:
        url, auth = split_credentials(p.webui)  # sent, never put in a reason, an alert or --json
        _run("webui", lambda: _webui(url, p.timeout, auth), checks)
        if p.api_key:
            _run("api", lambda: _keyed(url, p.api_key, model, p.timeout), checks)
    return Report(http.url, model, checks, started, time.monotonic() - t0)


def _run(name: str, fn, checks: list[Check]) -> Check:
    t = time.monotonic()
    try:
        status, reason, data = fn()
    except (ProbeError, BadAnswer, Refused) as e:
        status, reason, data = FAIL, str(e), {}
    except client.TransportError as e:
        status, reason, data = FAIL, client.explain(e), {}
    if status == FAIL and CRASHED.search(reason):
        reason = f"{reason}: {AMX_ADVICE}"
    check = Check(name, status, reason, round((time.monotonic() - t) * 1000, 1), data)
    checks.append(check)
    return check


# what Ollama says when the llama.cpp process under it dies (runner before 0.30, llama-server since)
CRASHED = re.compile(r"(runner|llama-server) process (has terminated|exited)|signal: (segmentation fault|illegal instruction)")
AMX_ADVICE = ("the server's llama.cpp crashed; on a CPU with AMX (Xeon Sapphire Rapids or newer: amx_int8 in /proc/cpuinfo) that is "
              "llama.cpp's AMX code as GCC before 13 compiles it, dying at the first token: upgrade Ollama to 0.32.2 or later "
              "(orch up pins a fixed one), or rebuild llama.cpp with GCC 13 or with -mno-amx-tile -mno-amx-int8 -mno-amx-bf16")


def _server(http):
    r = http.get("/")
    if r.status_code != 200:
        raise ProbeError(f"GET / answered HTTP {r.status_code}: {body_error(r)}")
    if "Ollama is running" not in r.text:
        raise ProbeError(f"GET / answered {kind(r)}, not Ollama's greeting: is this URL a web page or proxy instead of the API?")
    return OK, "answering", {}


def _version(http, feed: str):
    from orchestrator.ollama import cve_feed

    version = str(json_object(http.get("/api/version"), "/api/version").get("version", ""))
    found = cve_feed.findings(version, feed)
    if found is None:
        return DEGRADED, f"version {version!r} is not a release number: cannot check it against known vulnerabilities", {"version": version}
    data = {"version": version, "cves": [a.cve for a in found.advisories], "source": found.source,
            **({"fallback": found.fallback} if found.fallback else {}),
            "unpatched": [{"cve": a.cve, "summary": a.summary, "mitigation": a.mitigation} for a in found.advisories if a.unpatched]}
    fixable = [a for a in found.advisories if not a.unpatched]
    seen = f" (per {found.source}{'; ' + found.fallback if found.fallback else ''})"
    if fixable:
        named = "; ".join(f"{a.cve} ({a.summary}, {a.remedy})" for a in fixable)
        return DEGRADED, f"Ollama {version} is open to {named}: upgrade it{seen}", data
    if data["unpatched"]:
        named = ", ".join(a["cve"] for a in data["unpatched"])
        return OK, f"version {version}; {named} have no fixed release: safe while only this host reaches it{seen}", data
    return OK, f"version {version}, no known vulnerability{seen}", data


def _judge_unpatched(checks: list[Check], exposure: Check) -> None:
    """An advisory no release fixes is judged by who can reach the server: beyond loopback it fails the version check."""
    version = next((c for c in checks if c.name == "version"), None)
    unpatched = (version.data.get("unpatched") if version else None) or []
    if not unpatched or not exposure.data.get("exposed_on"):
        return
    named = "; ".join(f"{a['cve']} ({a['summary']})" for a in unpatched)
    version.status = FAIL
    version.reason = (f"Ollama answers beyond loopback while open to {named}, which no release fixes: "
                      f"{unpatched[0]['mitigation']}")


def _model(http, wanted: str | None):
    models = [str(m.get("name") or m.get("model")) for m in _items(json_object(http.get("/api/tags"), "/api/tags"), "models", "/api/tags")]
    if wanted is None:
        if not models:
            raise ProbeError("the server has no models: orch build tiny, or orch register a build")
        return OK, f"{len(models)} models; probing {models[0]}", {"model": models[0], "models": models}
    if not names.is_served(wanted, models):
        raise ProbeError(names.not_served(wanted, models, http.url))
    return OK, "present", {"model": names.full(wanted)}


def _generate(http, model: str, p: Probe):
    body = {"model": model, "prompt": "你好", "stream": True, "options": {"num_predict": PROBE_TOKENS, "temperature": 0}}
    return _judge_stream("generate", http.read_stream("/api/generate", body, lambda line: line.get("response", ""), p.timeout), p)


def _chat(http, model: str, p: Probe):
    body = {"model": model, "messages": CHAT, "stream": True, "options": {"num_predict": PROBE_TOKENS, "temperature": 0}}
    markers = _template_markers(http, model)
    streamed = http.read_stream("/api/chat", body, lambda line: (line.get("message") or {}).get("content", ""), p.timeout)
    leak = next((m for m in (*markers, *ALWAYS_LEAKS) if m in streamed.text), None)
    if leak:
        raise ProbeError(f"chat-marker text {leak!r} leaked into the reply: the model's template or token types are wrong "
                         "(rebuild with orch build)")
    return _judge_stream("chat", streamed, p)


def _template_markers(http, model: str) -> list[str]:
    """The special pieces the model's TEMPLATE writes (Baichuan2's <reserved_106> and <reserved_107>)."""
    template = json_object(http.post("/api/show", {"model": model}), "/api/show").get("template") or ""
    return sorted(set(re.findall(r"<[A-Za-z_|][^<>\s{}]*>", template)))


def _judge_stream(name: str, streamed: client.Streamed, p: Probe):
    text, final, ttft = streamed.text, streamed.final, streamed.ttft
    count, duration = final.get("eval_count") or 0, final.get("eval_duration") or 0
    tps = round(count / duration * 1e9, 2) if duration else None
    load = final.get("load_duration")  # scheduling and loading the model, before any queue for a slot (Ollama's routes.go)
    data = {"ttft_s": round(ttft, 4) if ttft is not None else None, "load_s": round(load / 1e9, 4) if load else 0.0,
            "tokens_per_s": tps, "eval_count": count,
            "done_reason": final.get("done_reason"), "text": text[:200]}
    if not text.strip():
        raise ProbeError(f"{name} returned no text ({count} tokens counted, done_reason {final.get('done_reason')})")
    if ttft is not None and ttft > p.slow:
        return DEGRADED, f"first token after {ttft:.1f} s (slower than {p.slow:g} s)", data
    return OK, f"{count} tokens, first after {ttft * 1000:.0f} ms, {tps} tokens/s", data


def _openai(http, model: str):
    r = json_object(http.post("/v1/chat/completions", {"model": model, "messages": CHAT[-1:], "max_tokens": PROBE_TOKENS,
                                                  "temperature": 0}), "/v1/chat/completions")
    try:
        content = r["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise ProbeError("/v1/chat/completions answered without choices[0].message.content") from None
    if not content.strip():
        raise ProbeError("/v1/chat/completions returned an empty reply")
    return OK, f"{len(content)} characters", {"usage": r.get("usage")}


def _placement(http, model: str):
    """Where the server holds the model, from its own /api/ps (this prober's GPUs say nothing about a remote server's)."""
    running = [m for m in _items(json_object(http.get("/api/ps"), "/api/ps"), "models", "/api/ps")
               if m.get("name") == model or m.get("model") == model]
    if not running:
        return OK, "not loaded right now", {}
    size, vram = running[0].get("size") or 0, running[0].get("size_vram") or 0
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (size, vram)):
        raise ProbeError(f"/api/ps answered a size of {str(size)[:20]!r} and size_vram {str(vram)[:20]!r}, not byte counts")
    data = {"size": size, "size_vram": vram}
    if size and vram >= size:
        return OK, "fully in GPU memory", data
    if vram == 0:
        return OK, "on the CPU (the server reports no GPU memory in use for it)", data
    return DEGRADED, f"spilled: {vram / size:.0%} in GPU memory, the rest on the CPU (slower): use a smaller quant or num_ctx", data


def _exposure(host: str):
    """Warn when the port answers on a non-loopback address of this host: Ollama has no authentication."""
    url = urlparse(host)
    port = url.port or 11434
    if url.hostname not in ("127.0.0.1", "localhost", "::1") and url.hostname not in _local_addresses():
        return OK, "remote server (not checked from here)", {}
    open_on = [addr for addr in _local_addresses() if _answers(addr, port)]
    if open_on:
        return DEGRADED, (f"the Ollama port answers on {', '.join(f'{a}:{port}' for a in open_on)}: anyone on that network can use it; "
                          "bind it to 127.0.0.1 (OLLAMA_HOST=127.0.0.1)"), {"exposed_on": open_on}
    return OK, "loopback only", {}


def _local_addresses() -> list[str]:
    import psutil

    return sorted({a.address for addrs in psutil.net_if_addrs().values() for a in addrs
                   if a.family == socket.AF_INET and not a.address.startswith("127.")})


def _answers(addr: str, port: int) -> bool:
    try:
        with socket.create_connection((addr, port), timeout=0.5):
            return True
    except OSError:
        return False


def _webui(url: str, timeout: float, auth: tuple[str, str] | None = None):
    webui.health(url, timeout, auth)
    return OK, "healthy", {}


def _keyed(url: str, key: str, model: str | None, timeout: float):
    """What a script with the key gets: an OpenAI chat completion from the model, through Open WebUI."""
    if not model:
        raise ProbeError("no model to ask through the keyed API: pass --model")
    content = webui.keyed_chat(url, key, model, CHAT[-1:], max_tokens=PROBE_TOKENS, seconds=timeout)
    return OK, f"the key reaches {model} ({len(content)} characters)", {}


def _items(obj: dict, key: str, path: str) -> list[dict]:
    """obj[key] as the list of objects Ollama's API gives, or a ProbeError saying it is not one."""
    items = obj.get(key, [])
    if not isinstance(items, list) or not all(isinstance(m, dict) for m in items):
        raise ProbeError(f"{path} answered {key!r} as {type(items).__name__}, not a list of objects: is this Ollama's API?")
    return items
