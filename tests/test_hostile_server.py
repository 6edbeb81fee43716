"""Servers that are not what they claim: a hostile or broken "Ollama" must not fill orch's memory or hold it past its timeout.

Each server here is a loopback double written for one fault no real Ollama produces: endless bytes with no newline,
a gigabyte-long line, answers of the wrong JSON type. orch runs as a child process with its address space capped,
so reading without a bound ends in a MemoryError instead of passing.
"""

from __future__ import annotations

import json
import resource
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from support import ORCH

CAP = 2 << 30  # orch's whole address space in these tests; an unbounded read of the answers below needs far more


class Hostile:
    """An HTTP server that answers Ollama's greeting and version, then misbehaves on the paths `answers` names."""

    def __init__(self, answers: dict):
        hostile = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def answer(self):
                if self.command == "POST":
                    self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = self.path.split("?")[0]
                how = hostile.answers.get(path)
                if path == "/" and how is None:
                    return self.send(b"Ollama is running", "text/plain")
                if path == "/api/version" and how is None:
                    return self.send(b'{"version": "0.40.2"}')
                if how is None:
                    return self.send(b'{"models": []}')
                if isinstance(how, bytes):
                    return self.send(how)
                if isinstance(how, tuple):  # (body, headers): a body sent as it is, e.g. gzip-encoded
                    self.send_response(200)
                    for k, v in ({"Content-Length": str(len(how[0]))} | how[1]).items():
                        self.send_header(k, v)
                    self.end_headers()
                    return self.wfile.write(how[0])
                self.send_response(200)
                self.send_header("Content-Type", getattr(how, "content_type", "application/x-ndjson"))
                self.end_headers()  # no length: the body runs until the connection closes
                deadline = time.monotonic() + 120
                try:
                    while time.monotonic() < deadline and (chunk := how()) is not None:  # None: the answer is over
                        self.wfile.write(chunk)
                except OSError:  # orch hung up: the point
                    pass
                self.close_connection = True

            do_GET = do_POST = do_HEAD = answer

            def send(self, body: bytes, ctype: str = "application/json"):
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        class Server(ThreadingHTTPServer):
            daemon_threads = True

        self.answers = answers
        self.server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()


def capped_orch(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (CAP, CAP))

    return subprocess.run([str(ORCH), *args], capture_output=True, text=True, timeout=timeout, preexec_fn=limit)


ENDLESS = lambda: b"x" * 65536  # noqa: E731  bytes forever, never a newline
GIGABYTE_LINE = lambda: b'{"response": "' + b"a" * 65536  # noqa: E731  one JSON line that never ends


@pytest.mark.parametrize("answers, check, reason", [
    ({"/api/generate": ENDLESS}, "generate", "line longer than 1 MB"),
    ({"/api/generate": GIGABYTE_LINE}, "generate", "line longer than 1 MB"),
    ({"/api/chat": ENDLESS}, "chat", "line longer than 1 MB"),
    ({"/api/tags": ENDLESS}, "model", "more than 32 MB"),
    ({"/api/version": ENDLESS}, "version", "more than 32 MB"),
    ({"/api/tags": b'["tiny:q4_K_M"]'}, "model", "not an object"),
    ({"/api/tags": b'{"models": "tiny:q4_K_M"}'}, "model", "not a list of objects"),
    ({"/api/ps": b'{"models": "everything"}'}, "placement", "not a list of objects"),
    ({"/api/ps": b'{"models": [{"name": "tiny:q4_K_M", "size": "big", "size_vram": 1}]}'}, "placement", "not byte counts"),
], ids=["endless-generate", "gigabyte-line", "endless-chat", "endless-tags", "endless-version", "tags-a-list",
        "tags-models-a-string", "ps-models-a-string", "ps-sizes-strings"])
def test_orch_health_bounds_what_it_reads_from_a_hostile_server(answers, check, reason):
    answers.setdefault("/api/tags", b'{"models": [{"name": "tiny:q4_K_M"}]}')
    answers.setdefault("/api/generate", b'{"response": "ok", "done": false}\n{"done": true, "eval_count": 1, "eval_duration": 1}\n')
    answers.setdefault("/api/chat", b'{"message": {"content": "ok"}, "done": false}\n{"done": true, "eval_count": 1}\n')
    answers.setdefault("/api/ps", b'{"models": [{"name": "tiny:q4_K_M", "size": 10, "size_vram": 0}]}')
    server = Hostile(answers)
    try:
        t = time.monotonic()
        proc = capped_orch("health", "--host", server.url, "--model", "tiny:q4_K_M", "--timeout", "20", "--json")
        seconds = time.monotonic() - t
    finally:
        server.close()
    assert "Traceback" not in proc.stderr and "MemoryError" not in proc.stderr, proc.stderr[-2000:]
    assert proc.returncode == 1 and seconds < 60
    failed = next(c for c in json.loads(proc.stdout)["checks"] if c["name"] == check)
    assert failed["status"] == "fail" and reason in failed["reason"], failed


def test_orch_bench_bounds_each_reply_from_a_server_that_never_ends_a_line():
    server = Hostile({"/api/chat": ENDLESS})
    try:
        proc = capped_orch("bench", "tiny:q4_K_M", "--host", server.url, "--users", "2", "--turns", "1", "--timeout", "20")
    finally:
        server.close()
    assert "Traceback" not in proc.stderr and "MemoryError" not in proc.stderr, proc.stderr[-2000:]
    assert proc.returncode == 1 and "line longer than 1 MB" in proc.stderr, proc.stderr


def gzip_bomb(inflated: int = 3 << 30) -> bytes:
    """A few MB that inflate past CAP: what a server may send as Content-Encoding: gzip whether or not it was asked."""
    import zlib

    z, block = zlib.compressobj(9, zlib.DEFLATED, 31), bytes(1 << 24)
    return b"".join([*(z.compress(block) for _ in range(inflated // len(block))), z.flush()])


@pytest.fixture(scope="module")
def bomb() -> tuple:
    return gzip_bomb(), {"Content-Encoding": "gzip", "Content-Type": "application/json"}


def trickle():
    """One byte of a JSON answer every 0.2 s, forever: a server that never goes silent long enough to time out a read."""
    time.sleep(0.2)
    return b" "


trickle.content_type = "application/json"
ENDLESS_JSON = lambda: b" " * 65536  # noqa: E731
ENDLESS_JSON.content_type = "application/json"


@pytest.mark.parametrize("path, check, reason", [
    ("/api/tags", "model", "more than 32 MB"),
    ("/api/version", "version", "more than 32 MB"),
])
def test_a_gzip_bomb_is_counted_as_it_inflates(bomb, path, check, reason):
    server = Hostile({"/api/tags": b'{"models": [{"name": "tiny:q4_K_M"}]}', path: bomb})
    try:
        proc = capped_orch("health", "--host", server.url, "--model", "tiny:q4_K_M", "--timeout", "20", "--json")
    finally:
        server.close()
    assert "Traceback" not in proc.stderr and "MemoryError" not in proc.stderr, proc.stderr[-2000:]
    failed = next(c for c in json.loads(proc.stdout)["checks"] if c["name"] == check)
    assert proc.returncode == 1 and failed["status"] == "fail" and reason in failed["reason"], failed


@pytest.mark.parametrize("answer, reason", [
    ("bomb", "more than 1 MB"),
    (ENDLESS_JSON, "more than 1 MB"),
    (trickle, "did not finish its answer in time"),
], ids=["gzip-bomb", "endless", "trickle"])
def test_orch_health_webui_bounds_a_hostile_open_webui(bomb, answer, reason):
    """--webui names a server orch does not control: its /health is read within 1 MB and within --timeout, whole."""
    ollama = Hostile({"/api/tags": b'{"models": [{"name": "tiny:q4_K_M"}]}'})
    webui = Hostile({"/health": bomb if answer == "bomb" else answer})
    try:
        t = time.monotonic()
        proc = capped_orch("health", "--host", ollama.url, "--model", "tiny:q4_K_M", "--webui", webui.url, "--timeout", "3", "--json")
        seconds = time.monotonic() - t
    finally:
        ollama.close()
        webui.close()
    assert "Traceback" not in proc.stderr and "MemoryError" not in proc.stderr, proc.stderr[-2000:]
    failed = next(c for c in json.loads(proc.stdout)["checks"] if c["name"] == "webui")
    assert proc.returncode == 1 and failed["status"] == "fail" and reason in failed["reason"], failed
    assert failed["latency_ms"] < 10_000 and seconds < 60


def test_a_reply_that_keeps_streaming_is_never_cut_but_a_silent_server_is():
    """A chat's reply may run longer than the timeout while it keeps coming (orch chat's long answers); a server that goes
    silent for longer than the timeout is given up on."""
    from orchestrator.ollama.client import Ollama, ReadTimeout

    lines = iter([json.dumps({"message": {"role": "assistant", "content": f"{i} "}, "done": False}).encode() + b"\n" for i in range(15)]
                 + [b'{"message": {"role": "assistant", "content": ""}, "done": true}\n'])

    def slow_reply():
        time.sleep(0.2)
        return next(lines, None)

    server = Hostile({"/api/chat": slow_reply})
    try:
        with Ollama(server.url, timeout=1.0) as ollama:
            t = time.monotonic()
            text = "".join(part.message.content for part in ollama.chat("tiny:q4_K_M", [{"role": "user", "content": "hi"}], stream=True))
            assert time.monotonic() - t > 2.0, "the reply took longer than the timeout"
        assert text.split() == [str(i) for i in range(15)]
    finally:
        server.close()

    def silence():
        time.sleep(5)
        return b""

    server = Hostile({"/api/chat": silence})
    try:
        with Ollama(server.url, timeout=1.0) as ollama, pytest.raises(ReadTimeout):
            list(ollama.chat("tiny:q4_K_M", [{"role": "user", "content": "hi"}], stream=True))
    finally:
        server.close()
