"""`orch chat` driven through a pseudo-terminal, as a person at a keyboard would use it: a reply from the real Ollama,
and the Ollama double for a reply the server never finishes."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import time
import urllib.request

from support import ORCH, cli

MODEL = "tiny:q4_K_M"


class Terminal:
    """A child process on a pseudo-terminal: write keystrokes, read what it prints."""

    def __init__(self, *args: str):
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen([str(ORCH), *args], stdin=slave, stdout=slave, stderr=slave, env=os.environ | {"COLUMNS": "100"})
        os.close(slave)
        self.seen = ""

    def read_until(self, text: str, timeout: float = 60) -> str:
        start, deadline = len(self.seen), time.monotonic() + timeout
        while text not in self.seen[start:]:
            assert time.monotonic() < deadline, f"{text!r} never appeared; saw {self.seen[-500:]!r}"
            ready, _, _ = select.select([self.master], [], [], 0.2)
            if ready:
                try:
                    self.seen += os.read(self.master, 4096).decode("utf-8", "replace")
                except OSError:  # the child closed the terminal
                    break
        return self.seen[start:]

    def type(self, line: str) -> None:
        os.write(self.master, (line + "\n").encode())

    def close(self) -> int:
        try:
            return self.proc.wait(timeout=30)
        finally:
            os.close(self.master)


def test_chat_streams_a_reply_and_leaves_on_bye(real_ollama, tiny_build):
    """The real Ollama."""
    server = real_ollama()
    cli("register", str(tiny_build), "--host", server.url, "--name", MODEL, "--no-check")
    term = Terminal("chat", MODEL, "--host", server.url)
    banner = term.read_until(">>> ")
    assert f"({MODEL} is a tiny Baichuan of " in banner and "a random model that proves the path" in banner, "the demo says it is one"
    before = server.requests("POST", "/api/chat")
    term.type("你好")
    reply = term.read_until(">>> ").replace("你好", "", 1).replace(">>> ", "").strip()
    assert reply, "no reply text reached the terminal"
    assert server.requests("POST", "/api/chat", at_least=before + 1) == before + 1
    term.type("/bye")
    assert term.close() == 0


def test_chat_with_a_model_the_server_lacks_is_one_line(real_ollama):
    """The real Ollama."""
    server = real_ollama()
    proc = cli("chat", "nosuch", "--host", server.url, check=False)
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    has = [m["name"] for m in json.loads(urllib.request.urlopen(f"{server.url}/api/tags").read())["models"]]
    assert line.startswith(f"error: nosuch is not on the server at {server.url}, which has ")
    assert all(m in line for m in has) if has else "no models: orch build tiny" in line, line


def test_a_message_the_server_never_answered_is_sent_again_on_enter_and_only_once(ollama_double, tiny_build):
    """The Ollama double goes away mid-conversation: chat says the message was not answered, Enter resends it, and the
    conversation the server then sees holds it once."""
    from orchestrator.ollama.chat import chat

    double = ollama_double()
    cli("register", str(tiny_build), "--host", double.url, "--name", MODEL, "--no-check")
    out: list[str] = []

    def server_down_then_back():
        double.stop()
        yield "你好"
        double.start()
        yield ""  # Enter: the unanswered message again
        yield "再见"
        yield "/bye"

    lines = server_down_then_back()
    chat(MODEL, double.url, read=lambda prompt: next(lines), write=out.append)
    said = "".join(out)
    assert "your message was not answered: press Enter to send it again" in said and "was kept" not in said
    assert double.stats()["chat_lengths"] == [1, 3], "the resent message once, then its reply and the next message"
