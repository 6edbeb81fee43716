"""The Ollama client: where the server is, the sessions to it, and what its errors mean in plain words.

Every request to an Ollama server goes through `Ollama`: the official `ollama`
client where it covers the API (create, show, chat, list, ps), orch's own
session only for what it lacks: the stream itself (time to first line,
line-by-line fault checks), blob uploads with progress and retries,
/api/version, and the raw answers the prober judges. Both sessions stand on
orchestrator.transport, so every answer is bounded there; its errors are the ones
this module's callers see (Refused, StreamError, TransportError).
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterator

from orchestrator import settings, transport
from orchestrator.errors import OrchError
from orchestrator.events import SILENT, Reporter
from orchestrator.transport import Refused, TransportError, body_error, error_text, short, split_credentials  # noqa: F401  its vocabulary

DEFAULT_HOST = "http://127.0.0.1:11434"
UPLOAD_ATTEMPTS = 3
CHUNK = 1 << 20
MAX_LINE = 1 << 20  # one NDJSON line is a few hundred bytes

START_IT = "start it (ollama serve, or orch up), or pass --host"  # the one advice when no Ollama answers
ReadTimeout = transport.ReadTimeout  # connected, but no (further) answer in time


class StreamError(transport.BadAnswer):
    """A streamed answer that broke Ollama's NDJSON contract, said in plain words."""


@contextmanager
def _official_errors() -> Iterator[None]:
    """The official client's exceptions, turned into this module's."""
    import ollama

    try:
        yield
    except ollama.ResponseError as e:
        raise Refused(e.status_code, error_text(e)) from None
    except ConnectionError as e:  # the official client's word for a refused connection
        raise transport.ConnectError(short(e)) from None


@dataclass(frozen=True)
class Streamed:
    text: str
    final: dict  # the last line, done: true, with eval_count and eval_duration
    ttft: float | None  # seconds to the first non-empty piece
    seconds: float


def resolve_host(host: str | None = None) -> str:
    """--host, else OLLAMA_HOST (a bare host or host:port, as Ollama accepts), else the default; 0.0.0.0 means this host."""
    raw = (host or settings.ollama_host() or DEFAULT_HOST).strip().rstrip("/")
    if "://" not in raw:
        raw = "http://" + raw
    scheme, rest = raw.split("://", 1)
    hostport = rest.split("/", 1)[0]
    if hostport.startswith("0.0.0.0"):
        hostport = hostport.replace("0.0.0.0", "127.0.0.1", 1)
    if ":" not in hostport.rsplit("]", 1)[-1]:
        hostport += ":11434"
    return f"{scheme}://{hostport}"


def shown_host(host: str | None) -> str:
    """The server's URL as orch prints it: resolved, without credentials."""
    return split_credentials(resolve_host(host))[0]


def manual_command(name: str, modelfile: Path, url: str) -> str:
    """The `ollama create` line that does by hand what registration does."""
    prefix = "" if url == DEFAULT_HOST else f"OLLAMA_HOST={url} "
    return f"{prefix}ollama create {name} -f {modelfile}"


def explain(e: Exception) -> str:
    """A transport failure in plain words, with how to start Ollama when nothing answered."""
    return transport.explain(e, START_IT)


class Ollama:
    """One Ollama server: its URL, a pooled HTTP session, and the official client over the same URL."""

    def __init__(self, host: str | None = None, *, timeout: float = 30.0, connect: float = 5.0, connections: int = 10):
        """`timeout`: the longest silence, and the whole of an answer that is not a stream (a stream, such as a chat's
        reply, may run as long as it keeps sending). `connections`: how many requests may be in flight at once (bench
        sets one per simulated user).

        Credentials in the URL (a proxy's basic auth) are sent as such, and `url` never holds them.
        """
        self.url, self.auth = split_credentials(resolve_host(host))
        self.bounds = transport.Bounds(read=timeout, total=timeout, connect=min(timeout, connect))
        self.connections = connections

    @cached_property
    def http(self):
        return transport.session(self.url, bounds=self.bounds, auth=self.auth, connections=self.connections)

    @cached_property
    def api(self):
        import ollama

        return ollama.Client(host=self.url, timeout=transport.timeout(self.bounds), transport=transport.transport(self.bounds, self.connections),
                             auth=self.auth)

    def close(self) -> None:
        """Close both sessions, the official client's too."""
        if "http" in self.__dict__:
            self.http.close()
        if "api" in self.__dict__:
            self.api._client.close()

    def __enter__(self) -> "Ollama":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- plain requests -------------------------------------------------------------------------------------------
    def get(self, path: str) -> transport.Response:
        return self.http.get(path)

    def post(self, path: str, body: dict) -> transport.Response:
        return self.http.post(path, json=body)

    @contextmanager
    def stream(self, path: str, body: dict, seconds: float | None = None) -> Iterator[transport.Response]:
        """POST and stream the answer; `seconds` bounds the whole of it (a probe's), else it runs while it keeps sending."""
        with self.http.stream("POST", path, json=body, extensions=transport.deadline(seconds) if seconds else None) as r:
            yield r

    def read_stream(self, path: str, body: dict, piece: Callable[[dict], str], timeout: float) -> Streamed:
        """POST and read the NDJSON answer line by line, timing the first token; every line is checked.

        A broken contract (an HTTP error, an HTML page, a malformed or error
        line, a stream cut before its final line, no finish in `timeout`) is a
        StreamError in plain words; a lost connection stays a TransportError.
        """
        t = time.monotonic()
        text, ttft = [], None
        try:
            with self.stream(path, body, timeout) as r:
                if r.status_code != 200:
                    r.read()
                    raise StreamError(f"{path} answered HTTP {r.status_code}: {body_error(r)}")
                if "html" in r.headers.get("content-type", ""):
                    raise StreamError(f"{path} answered an HTML page, not JSON: is this URL a proxy or web page instead of the API?")
                for line in _lines(r.iter_bytes(), path):
                    if time.monotonic() > t + timeout:
                        raise StreamError(f"{path} did not finish within {timeout:g} s")
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except ValueError:
                        raise StreamError(f"{path} sent a malformed JSON line: {line[:60]!r}") from None
                    if not isinstance(obj, dict):
                        raise StreamError(f"{path} sent a JSON line that is not an object: {line[:60]!r}")
                    if obj.get("error"):
                        raise StreamError(f"{path} reported an error mid-stream: {str(obj['error'])[:200]}")
                    chunk = piece(obj) or ""
                    if chunk and ttft is None:
                        ttft = time.monotonic() - t
                    text.append(chunk)
                    if obj.get("done"):
                        return Streamed("".join(text), obj, ttft, time.monotonic() - t)
        except transport.TooSlow:
            raise StreamError(f"{path} did not finish within {timeout:g} s") from None
        except transport.ReadTimeout:
            raise StreamError(f"{path}: no token within {timeout:g} s") from None
        raise StreamError(f"{path} stream ended before its final done line (after {len(''.join(text))} characters)")

    def version(self, timeout: float = 3.0) -> str | None:
        """The server's version, or None when nothing (or something other than Ollama) answers."""
        try:
            r = self.http.get("/api/version", timeout=timeout, extensions=transport.deadline(timeout))
            answer = r.json() if r.status_code == 200 else None
            return str(answer.get("version", "unknown"))[:40] if isinstance(answer, dict) else None
        except (TransportError, ValueError):
            return None

    def models(self) -> list[str]:
        """Names of the models the server has (empty when it cannot be asked)."""
        return [m["name"] for m in self.listed()]

    def listed(self) -> list[dict]:
        """Each model's name and digest (empty when the server cannot be asked)."""
        try:
            with _official_errors():
                return [{"name": m.model, "digest": m.digest} for m in self.api.list().models if m.model]
        except (Refused, TransportError, ValueError):
            return []

    def loaded(self) -> list[dict]:
        """/api/ps: the models in memory with their size and GPU share. Raises OrchError when the server does not answer."""
        try:
            with _official_errors():
                return [m.model_dump(mode="json") | {"name": m.model} for m in self.api.ps().models]
        except (Refused, TransportError, ValueError) as e:
            raise OrchError(f"Ollama did not answer {self.url}/api/ps ({explain(e) if isinstance(e, TransportError) else e})") from None

    # --- blobs ------------------------------------------------------------------------------------------------------
    def upload_blob(self, path: Path, digest: str, *, reporter: Reporter = SILENT) -> bool:
        """Upload `path` unless the server has it; True if it was sent. Streams from disk; a broken transfer is retried."""
        blob = f"/api/blobs/sha256:{digest}"
        if self.http.head(blob).status_code == 200:
            return False
        size = path.stat().st_size
        last = ""
        with reporter.task(f"upload {path.name}", total=size) as task:
            for attempt in range(1, UPLOAD_ATTEMPTS + 1):
                task.update(completed=0)
                try:
                    r = self.http.post(blob, content=_chunks(path, task.advance), headers={"Content-Length": str(size)})
                except TransportError as e:
                    last = type(e).__name__
                else:
                    if r.status_code in (200, 201):
                        return True
                    if r.status_code < 500:
                        raise OrchError(f"the server refused the upload of {path.name} (HTTP {r.status_code}: {body_error(r)})")
                    last = f"HTTP {r.status_code}: {body_error(r)}"
                if attempt < UPLOAD_ATTEMPTS:
                    time.sleep(attempt)
        raise OrchError(f"uploading {path.name} failed {UPLOAD_ATTEMPTS} times (last: {last}): "
                        "check the connection to the server and run orch register again")

    # --- through the official client --------------------------------------------------------------------------------
    def create(self, name: str, *, on_status: Callable[[str], None] = lambda s: None, **request) -> None:
        """POST /api/create, streamed: each status line to `on_status`; an error line raises Refused."""
        with _official_errors():
            for status in self.api.create(model=name, stream=True, **request):
                if status.status:
                    on_status(status.status)

    def show(self, name: str):
        with _official_errors():
            return self.api.show(name)

    def chat(self, name: str, messages: list[dict], *, stream: bool = False, options: dict | None = None):
        """The official client's chat; a stream is read through, so its errors arrive as Refused or TransportError too."""
        with _official_errors():
            answer = self.api.chat(model=name, messages=messages, stream=stream, options=options)
            if not stream:
                return answer
        return self._relay(answer)

    @staticmethod
    def _relay(parts):
        with _official_errors():
            yield from parts


def _lines(chunks: Iterator[bytes], path: str) -> Iterator[str]:
    """NDJSON lines from a body's chunks, refusing a line longer than MAX_LINE before it is all in memory."""
    pending = bytearray()
    for chunk in chunks:
        pending += chunk
        while (end := pending.find(b"\n")) >= 0:
            yield pending[:end].decode("utf-8", errors="replace")
            del pending[:end + 1]
        if len(pending) > MAX_LINE:
            raise StreamError(f"{path} sent a line longer than {MAX_LINE >> 20} MB: that is not Ollama's NDJSON stream")
    if pending:
        yield pending.decode("utf-8", errors="replace")


def _chunks(path: Path, advance: Callable[[float], None]):
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            advance(len(block))
            yield block
