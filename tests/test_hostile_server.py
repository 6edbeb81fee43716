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
                self.send_response(200)
                self.send_header("Content-Type", "application/x-ndjson")
                self.end_headers()  # no length: the body runs until the connection closes
                deadline = time.monotonic() + 120
                try:
                    while time.monotonic() < deadline:  # bounded here too: the test's own loop stops by itself
                        self.wfile.write(how())
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
