"""orch's one HTTP transport: every answer bounded in decoded bytes and in time, and one vocabulary of errors.

Every connection orch opens (to Ollama, through the official client too, to
Open WebUI, OSV, a webhook, a package index) is a session made here, so no
server, however it answers, can fill orch's memory or hold it forever:
- the body is counted after decoding: orch asks for gzip or deflate only and
  inflates it itself, a bounded piece at a time, so a small gzip bomb stops at
  the cap like a large plain body;
- `read` bounds each silence, `total` the whole answer. A stream (NDJSON or
  server-sent events: a chat reply) has no total unless the caller sets one, so
  a long answer that keeps coming is never cut; a request can carry its own
  deadline (`deadline=` below).

The errors: Refused (an error status, with the server's own text), BadAnswer
(an answer that is not the API asked), TransportError (unreachable, broke off,
too large, too slow). The Ollama and Open WebUI clients build on these.
"""

from __future__ import annotations

import hashlib
import json
import time
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import httpx

from orchestrator.errors import OrchError

MAX_BODY = 32 << 20  # no API orch talks to answers near this: a reply of 8,000 tokens streams about 1.5 MB
STREAMS = ("application/x-ndjson", "text/event-stream")
DEADLINE = "orch.deadline"  # a request extension: the monotonic time by which its whole answer must be in
PIECE = 1 << 16  # inflated at most this much at a time

TransportError = httpx.HTTPError
ConnectError = httpx.ConnectError
TimeoutError = httpx.TimeoutException  # noqa: A001  the transport's, not the builtin
ReadTimeout = httpx.ReadTimeout
RemoteProtocolError = httpx.RemoteProtocolError
Response = httpx.Response


class TooLarge(httpx.ReadError):
    """The answer passed its cap (counted decoded)."""


class TooSlow(httpx.ReadTimeout):
    """The answer did not finish by its deadline, though it kept sending."""


class Refused(OrchError):
    """The server answered with an error status; `error` is its own text."""

    def __init__(self, status_code: int, error: str):
        super().__init__(error)
        self.status_code, self.error = status_code, error


class BadAnswer(OrchError):
    """The server answered, but not as the API asked would: said in plain words."""


@dataclass(frozen=True)
class Bounds:
    max_bytes: int = MAX_BODY
    read: float = 30.0  # the longest silence within an answer
    total: float | None = 30.0  # the whole answer (not a stream's)
    connect: float = 5.0
    stream_total: float | None = None  # a stream's whole answer: None, as long as it keeps sending
    retries: int = 0  # connection attempts again after a refused connect

    def within(self, seconds: float) -> "Bounds":
        """The same, with every deadline `seconds` (a probe's timeout)."""
        return replace(self, read=seconds, total=seconds, connect=min(self.connect, seconds))


PROBE = Bounds(max_bytes=1 << 20, read=5.0, total=5.0)  # a health endpoint: a small answer, soon


class _Inflated(httpx.SyncByteStream):
    """The body as the caller reads it: inflated when the server compressed it, counted, and cut at its deadline."""

    def __init__(self, raw, encoding: str, url: str, deadline: float | None, max_bytes: int):
        self.raw, self.url, self.deadline, self.max_bytes = raw, url, deadline, max_bytes
        self.inflate = None if encoding == "identity" else zlib.decompressobj(47 if encoding == "gzip" else zlib.MAX_WBITS)
        self.raw_deflate = encoding == "deflate"

    def __iter__(self) -> Iterator[bytes]:
        total = 0
        for chunk in self.raw:
            for piece in self._pieces(chunk):
                total += len(piece)
                if total > self.max_bytes:
                    raise TooLarge(f"{self.url} answered more than {_size(self.max_bytes)}: that is not the API orch asked")
                yield piece
            if self.deadline is not None and time.monotonic() > self.deadline:
                raise TooSlow(f"{self.url} did not finish its answer in time")

    def _pieces(self, chunk: bytes) -> Iterator[bytes]:
        if self.inflate is None:
            yield chunk
            return
        data = chunk
        while data:
            try:
                out = self.inflate.decompress(data, PIECE)
            except zlib.error:
                if not self.raw_deflate:
                    raise httpx.DecodingError(f"{self.url} sent a body that does not inflate") from None
                self.inflate, self.raw_deflate = zlib.decompressobj(-zlib.MAX_WBITS), False  # "deflate" sent without its header
                continue
            self.raw_deflate = False
            yield out
            data = self.inflate.unconsumed_tail

    def close(self) -> None:
        self.raw.close()


class _Transport(httpx.HTTPTransport):
    def __init__(self, bounds: Bounds, **kwargs):
        super().__init__(retries=bounds.retries, **kwargs)
        self.bounds = bounds

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.headers["Accept-Encoding"] = "gzip, deflate"
        response = super().handle_request(request)
        encoding = response.headers.get("content-encoding", "identity").strip().lower() or "identity"
        if encoding not in ("identity", "gzip", "deflate"):
            response.close()
            raise httpx.DecodingError(f"{request.url} answered in {encoding!r} encoding, which orch did not ask for")
        streamed = response.headers.get("content-type", "").split(";")[0].strip().lower() in STREAMS
        deadline = request.extensions.get(DEADLINE)
        if deadline is None and (seconds := self.bounds.stream_total if streamed else self.bounds.total) is not None:
            deadline = time.monotonic() + seconds
        headers = [(k, v) for k, v in response.headers.raw
                   if encoding == "identity" or k.lower() not in (b"content-encoding", b"content-length")]
        shown = f"{request.url.scheme}://{request.url.netloc.decode()}{request.url.path}"  # never its credentials or query
        return httpx.Response(response.status_code, headers=headers, extensions=response.extensions, request=request,
                              stream=_Inflated(response.stream, encoding, shown, deadline, self.bounds.max_bytes))


def transport(bounds: Bounds = Bounds(), connections: int = 10) -> httpx.BaseTransport:
    """The bounded transport, for a client that makes its own session (the official `ollama` one)."""
    return _Transport(bounds, limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections))


def timeout(bounds: Bounds = Bounds()) -> httpx.Timeout:
    return httpx.Timeout(bounds.read, connect=min(bounds.read, bounds.connect))


def session(base_url: str = "", *, bounds: Bounds = Bounds(), auth: tuple[str, str] | None = None, connections: int = 10,
            headers: dict | None = None) -> httpx.Client:
    """A pooled session whose every answer is bounded."""
    return httpx.Client(base_url=base_url, timeout=timeout(bounds), transport=transport(bounds, connections), auth=auth,
                        headers=headers, follow_redirects=True)


def deadline(seconds: float) -> dict:
    """The `extensions` that give one request (a stream too) a deadline for its whole answer."""
    return {DEADLINE: time.monotonic() + seconds}


def get(url: str, *, bounds: Bounds = PROBE, auth: tuple[str, str] | None = None, headers: dict | None = None) -> httpx.Response:
    """One GET, read whole within its bounds."""
    with session(bounds=bounds, auth=auth, headers=headers) as s:
        r = s.get(url)
        r.read()
        return r


def post_json(url: str, body: dict, *, bounds: Bounds = Bounds(read=10.0, total=10.0), headers: dict | None = None) -> httpx.Response:
    """One POST of JSON (OSV, an alert webhook, a keyed chat), its answer read whole within its bounds."""
    with session(bounds=bounds, headers=headers) as s:
        r = s.post(url, json=body)
        r.read()
        return r


def download(url: str, dest: Path, *, size: int, sha256: str, advance: Callable[[int], None] = lambda n: None,
             bounds: Bounds = Bounds(read=60.0, total=None, retries=2)) -> None:
    """`url` into `dest`, refused unless it is exactly `size` bytes with this sha256; nothing is left at `dest` otherwise."""
    digest, got = hashlib.sha256(), 0
    tmp = dest.with_name(dest.name + ".partial")
    try:
        with session(bounds=replace(bounds, max_bytes=size), headers={"Accept": "*/*"}) as s, s.stream("GET", url) as r:
            if r.status_code != 200:
                raise Refused(r.status_code, f"{url} answered HTTP {r.status_code}")
            with open(tmp, "wb") as f:
                for block in r.iter_raw(1 << 20):
                    f.write(block)
                    digest.update(block)
                    got += len(block)
                    advance(len(block))
        if got != size or digest.hexdigest() != sha256:
            raise BadAnswer(f"{url} is not the pinned file: {got} bytes with sha256 {digest.hexdigest()[:16]}…, "
                            f"where {size} bytes with sha256 {sha256[:16]}… were expected")
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)


def short(e: BaseException) -> str:
    return (str(e) or type(e).__name__).splitlines()[0][:160]


def explain(e: BaseException, unreachable: str = "check the address and that the server runs") -> str:
    """A transport failure in plain words; `unreachable` is the advice when nothing answered."""
    if isinstance(e, (TooLarge, TooSlow)):
        return short(e)
    if isinstance(e, httpx.ConnectError):
        return f"connection refused or unreachable ({short(e)}): {unreachable}"
    if isinstance(e, httpx.TimeoutException):
        return "no answer within the timeout"
    if isinstance(e, httpx.RemoteProtocolError):
        return f"the server broke off its answer ({short(e)})"
    return f"{type(e).__name__}: {short(e)}"


def body_error(r: httpx.Response) -> str:
    """The `error` (or `detail`) of a JSON error body, or what the body is when it is not one."""
    try:
        obj = r.json()
        return str(obj.get("error") or obj.get("detail") or r.text)[:200]
    except (ValueError, AttributeError):
        return ("an HTML page" if "<html" in r.text.lower() else r.text.strip()[:200]) or "no body"


def kind(r: httpx.Response) -> str:
    """What a body that should have been JSON is: an HTML page, or its content type."""
    ctype = r.headers.get("content-type", "")
    return "an HTML page" if "html" in ctype or r.text.lstrip().lower().startswith("<") else f"{ctype or 'an unknown body'}"


def json_object(r: httpx.Response, what: str) -> dict:
    """The answer as a JSON object: Refused on an error status, BadAnswer on anything else."""
    if r.status_code >= 400:
        raise Refused(r.status_code, f"{what} answered HTTP {r.status_code}: {body_error(r)}")
    try:
        obj = r.json()
    except ValueError:
        raise BadAnswer(f"{what} answered {kind(r)}, not JSON: is this URL a proxy or web page instead of the API?") from None
    if not isinstance(obj, dict):
        raise BadAnswer(f"{what} answered JSON that is not an object")
    return obj


def error_text(e: BaseException) -> str:
    """One line for an error a client library raised (its text may itself be a JSON error body)."""
    text = getattr(e, "error", None) or str(e)
    try:
        text = json.loads(text).get("error", text)
    except (ValueError, AttributeError):
        pass
    return str(text).strip().splitlines()[0][:300] if str(text).strip() else type(e).__name__


def split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """`http://user:pass@host:port` as the URL without them (safe to print, label, send in an alert) and the credentials."""
    from urllib.parse import unquote

    scheme, _, rest = url.partition("://")
    hostport, slash, path = rest.partition("/")
    if "@" not in hostport:
        return url, None
    userinfo, hostport = hostport.rsplit("@", 1)
    user, _, password = userinfo.partition(":")
    return f"{scheme}://{hostport}{slash}{path}", (unquote(user), unquote(password))


def _size(n: int) -> str:
    return f"{n >> 20} MB" if n >= 1 << 20 else f"{n >> 10} KB"
