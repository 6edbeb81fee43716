"""Helpers the tests share: run the real `orch` command, read logits through llama.cpp, compare with the reference."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ORCH = Path(sys.executable).with_name("orch")


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
