"""Helpers the tests share: run the real `orch` command, read logits through llama.cpp, compare with the reference."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from orchestrator.events import Reporter, Task

ORCH = Path(sys.executable).with_name("orch")


class Recording(Reporter):
    """The reporter a CLI would pass, keeping what each bar was told."""

    def __init__(self):
        self.bars = []
        self.notes: list[tuple[str, str]] = []  # (level, text)

    def note(self, text, level="info"):
        self.notes.append((level, text))

    def task(self, description, total=None, unit="bytes"):
        bar = {"description": description, "total": total, "unit": unit, "completed": []}
        self.bars.append(bar)

        class Bar(Task):
            def update(self, *, completed=None, total=None, description=None):
                if completed is not None:
                    bar["completed"].append(completed)

            def advance(self, amount):
                bar["completed"].append((bar["completed"] or [0])[-1] + amount)
        return Bar()


TINY_NAME = "tiny:q4_K_M"


def serving_tiny(start_server, tiny_build: Path):
    """start(**kw): a server from `start_server` (the real Ollama or its double) with the tiny build registered as
    tiny:q4_K_M through orch register."""
    def start(**kw):
        server = start_server(**kw)
        cli("register", str(tiny_build), "--host", server.url, "--name", TINY_NAME, "--no-check")
        return server
    return start


def orch(*args: str, env: dict | None = None, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the installed `orch` console script, as a user would (where the process itself is the point: signals, startup)."""
    proc = subprocess.run([str(ORCH), *args], capture_output=True, text=True, env=env or os.environ.copy(), timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"orch {' '.join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    return proc


def cli(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """The same command run in this process through Typer's CliRunner: the same app, no interpreter start-up."""
    from typer.testing import CliRunner

    from orchestrator.cli import app

    result = CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)
    proc = subprocess.CompletedProcess(["orch", *args], result.exit_code, result.stdout, result.stderr)
    if check and proc.returncode != 0:
        raise AssertionError(f"orch {' '.join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    return proc


LLAMA_CHILD = Path(__file__).resolve().with_name("llama_child.py")


def in_llama_child(request: dict, *, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run tests/llama_child.py; a llama.cpp crash becomes one failed assertion naming the signal and this CPU."""
    from orchestrator.builder.llamacpp import cpu

    proc = subprocess.run([sys.executable, str(LLAMA_CHILD)], input=json.dumps(request), capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
        raise AssertionError(f"llama.cpp ({request['do']} on {Path(request['gguf']).name}) died with {how} on a "
                             f"{cpu.describe()}\n{proc.stderr[-2000:]}")
    return proc


def gguf_logits(gguf: Path, sequences: list[list[int]], *, settings: str = "f32-kv") -> list[np.ndarray]:
    """llama.cpp's logits at every position of each sequence, computed in a child process (see llama_child.py)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "logits.npz"
        in_llama_child({"do": "logits", "gguf": str(gguf), "sequences": sequences, "settings": settings, "out": str(out)})
        with np.load(out) as arrays:
            return [arrays[f"arr_{i}"] for i in range(len(sequences))]


def generate(gguf: Path, prompt: str, tokens: int, *, repack: bool) -> dict:
    """Greedy generation in a child process, llama.cpp's weight repacking on or off."""
    proc = in_llama_child({"do": "generate", "gguf": str(gguf), "prompt": prompt, "tokens": tokens, "repack": repack})
    return json.loads(proc.stdout.strip().splitlines()[-1])


@dataclass
class Fidelity:
    """How a GGUF's logits compare with the reference forward pass."""

    min_cosine: float
    positions: int
    top1_mismatches: int  # positions whose top-1 differs with a clear margin
    near_tie_flips: int  # positions whose top-1 differs within 5 % of the logit spread

    def passes(self, *, allow_near_ties: bool) -> bool:
        return self.min_cosine >= 0.999 and self.top1_mismatches == 0 and (allow_near_ties or self.near_tie_flips == 0)


def compare(got: list[np.ndarray], want: list[np.ndarray]) -> Fidelity:
    cosines, mismatches, ties, positions = [], 0, 0, 0
    for g, w in zip(got, want):
        for gi, wi in zip(g, w):
            positions += 1
            cosines.append(float(gi @ wi / (np.linalg.norm(gi) * np.linalg.norm(wi))))
            a, b = int(gi.argmax()), int(wi.argmax())
            if a != b:
                gap = abs(wi[b] - wi[a])
                if gap < 0.05 * (wi.max() - wi.min()):
                    ties += 1
                else:
                    mismatches += 1
    return Fidelity(min(cosines), positions, mismatches, ties)


def fails_cleanly(*args: str, env: dict | None = None) -> str:
    """`orch build ARGS --no-register` refused: one `error:` line on stderr, a non-zero exit, nothing on stdout."""
    proc = cli("build", *args, "--no-register", env=env, check=False)
    assert proc.returncode != 0, proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    return lines[0]


def build_record(out: Path) -> dict:
    return json.loads((out / "build.json").read_text())


DOUBLE = Path(__file__).resolve().with_name("ollama_double.py")


class OllamaDouble:
    """tests/ollama_double.py in a child process: a stand-in for an Ollama server, never reported as one."""

    def __init__(self, store: Path, render: Path, *, port: int = 0, bind: str = "127.0.0.1", version: str | None = None):
        self.store, self.render, self.bind, self.version = store, render, bind, version
        self.port = port
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "OllamaDouble":
        cmd = [sys.executable, str(DOUBLE), "--store", str(self.store), "--render", str(self.render), "--port", str(self.port),
               "--bind", self.bind] + (["--version", self.version] if self.version else [])
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.port = json.loads(self.proc.stdout.readline())["port"]
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def fault(self, kind: str, **kw) -> None:
        import httpx

        httpx.post(f"{self.url}/_double/fault", json={"kind": kind, **kw}, timeout=5).raise_for_status()

    def stats(self) -> dict:
        import httpx

        return httpx.get(f"{self.url}/_double/stats", timeout=5).json()

    def get(self, path: str):
        import httpx

        return httpx.get(f"{self.url}{path}", timeout=30)

    def post(self, path: str, body: dict):
        import httpx

        return httpx.post(f"{self.url}{path}", json=body, timeout=60)


REAL_OLLAMA_ENV = "ORCH_TEST_OLLAMA"  # the ollama binary scripts/test builds with `orch install-ollama`


def real_ollama_binary() -> Path:
    """The Ollama built from source for the suite; scripts/test builds it and exports its path."""
    found = os.environ.get(REAL_OLLAMA_ENV)
    assert found and Path(found).is_file(), (f"the real Ollama is needed: run scripts/test, which builds it with orch install-ollama "
                                             f"and sets ${REAL_OLLAMA_ENV} (found {found!r})")
    return Path(found)


class RealOllama:
    """`ollama serve` built from Ollama's own sources, on a loopback port with its own model store."""

    def __init__(self, home: Path, *, port: int = 0, bind: str = "127.0.0.1", env: dict | None = None):
        self.home, self.port, self.bind, self.extra = home, port or free_port(), bind, env or {}
        self.proc: subprocess.Popen | None = None
        self.log = home / "ollama-serve.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict:
        """What `ollama` (serve or the CLI) needs to find this server and its store."""
        return os.environ | {"HOME": str(self.home), "OLLAMA_HOST": f"{self.bind}:{self.port}", "OLLAMA_MODELS": str(self.home / "models"),
                             "OLLAMA_NO_CLOUD": "1"} | self.extra

    def start(self, timeout: float = 60) -> "RealOllama":
        import httpx

        self.home.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([str(real_ollama_binary()), "serve"], env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)

        def answers():
            assert self.proc.poll() is None, f"ollama serve exited {self.proc.returncode}: {self.log.read_text()[-2000:]}"
            try:
                return httpx.get(f"{self.url}/api/version", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(answers, timeout=timeout, what=f"ollama serve answering on {self.url}", every=0.1)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def requests(self, method: str, path: str = "", *, at_least: int = 0, timeout: float = 10) -> int:
        """How many `method path...` requests the server has answered, from its own request log.

        Gin writes a request's line when its handler returns, which is after the client has read the last streamed
        chunk: a count read just after a client finished can lag by that request. With `at_least`, the count is read
        again until it reaches that many or `timeout` seconds pass, and then returned, so an assertion still sees
        too few or too many."""
        with contextlib.suppress(AssertionError):  # still too few: the count says so in the caller's assertion
            wait_until(lambda: answered(self.log, method, path) >= at_least, timeout=timeout)
        return answered(self.log, method, path)

    def cli(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([str(real_ollama_binary()), *args], env=self.env, capture_output=True, text=True, check=check,
                              timeout=timeout)


def answered(log: Path, method: str, path: str, status: str = "2..") -> int:
    """How many `method path...` requests (path a prefix) Ollama has answered with `status` (a regex), counted in its log
    (one [GIN] line each); no method: every request, whatever its answer."""
    import re

    text = log.read_text(errors="replace") if log.is_file() else ""
    pattern = rf'^\[GIN\][^|]*\|\s+{status}\s+\|.*\|\s+{method}\s+"{re.escape(path)}' if method else r"^\[GIN\]"
    return len(re.findall(pattern, text, re.M))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, *, timeout: float = 30, what: str = "the condition", every: float = 0.05):
    """Poll `condition` until it returns something true (returned) or `timeout` seconds pass (an AssertionError naming `what`)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        if result := condition():
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(every)


def read_json_lines(proc: subprocess.Popen, predicate, timeout: float = 60) -> list[dict]:
    """JSON lines a running `orch health --watch --json` prints, up to the first one `predicate` accepts."""
    import time

    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        assert line, f"the monitor exited: {proc.stderr.read()}"
        seen.append(json.loads(line))
        if predicate(seen[-1]):
            return seen
    raise AssertionError(f"not seen within {timeout} s: {seen[-3:]}")


def browser_chat(webui: str, email: str, password: str, message: str, screenshot: Path, *, model: str | None = None,
                 finished=lambda: None) -> str:
    """Sign in to Open WebUI and send `message` in headless Chromium, as a user does: the reply's text once `finished()`
    returns (the page shows a reply before it is complete), with the screenshot kept. `model`: the one the chat must
    have chosen by itself."""
    import re
    import shutil

    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "headless Chromium is needed: apt-get install chromium (scripts/test does it)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(f"{webui}/auth", wait_until="networkidle")
        page.fill("input[name=email]", email)
        page.fill("input[name=password]", password)
        page.click("button:has-text('Sign in')")
        page.wait_for_selector("#chat-input", timeout=60_000)
        notes = page.get_by_role("button", name=re.compile("Okay, Let's Go", re.I))
        if notes.count():
            notes.first.click()
        if model is not None:
            assert page.locator("#model-selector-model-button").inner_text().strip() == model
        page.locator("#chat-input").click()
        page.keyboard.type(message)
        page.keyboard.press("Enter")
        page.wait_for_function("() => (document.querySelector('#response-content-container')?.innerText || '').trim().length > 0",
                               timeout=180_000)
        finished()
        page.screenshot(path=str(screenshot))
        text = page.locator("#response-content-container").first.inner_text().strip()
        browser.close()
    assert text, "no reply reached the page"
    return text
