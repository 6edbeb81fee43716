"""Shared fixtures: tiny checkpoints, the pinned llama.cpp tree, real builds made once per session.

Every test runs with its own XDG cache and data homes, so nothing a user has
built is touched; only the provisioned llama.cpp tree is shared (through
$ORCH_LLAMA_CPP), because fetching it once per test would be waste.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.builder.llamacpp import provision as llamacpp
from orchestrator.builder.tiny import make_tiny_checkpoint

from support import orch

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"

# The machine's cache, where the engines and the test venvs are kept: every test gets an XDG_CACHE_HOME of its own, and
# the engine fixtures (tests/engines.py, control_plane.py) must still find the machine's, whenever they are first imported.
os.environ.setdefault("ORCH_TEST_CACHE", os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache"))

# A suite started in the background (nohup, `&` in a script) has SIGINT ignored, and every child inherits that: the
# tests that stop `orch health --watch` with Ctrl-C's signal would wait forever. A handler here is reset to the
# default in each child at exec, so the children see SIGINT as a user's Ctrl-C.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


# The suite runs on two pytest-xdist workers (scripts/test): most of its time is spent waiting on servers, not computing.
# Tests that share one thing the machine has only one of run on one worker, in turn: the Docker engine (one dockerd, its
# bridge and iptables), the Kubernetes control planes (one record of their processes), Open WebUI's cached virtualenv
# (installed on first use; two Open WebUIs starting at once would each take twice as long) and checkov's virtualenv.
ONE_AT_A_TIME = {"docker_engine": "docker", "cluster": "kubernetes", "scaling_cluster": "kubernetes", "webui_env": "open-webui",
                 "checkov": "checkov"}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    for item in items:
        for fixture, group in ONE_AT_A_TIME.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.xdist_group(group))
                break


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session):
    """On a worker, after xdist named the groups: a test left out of its group would start a second engine beside the
    first (pytest 9.2 keeps node ids where xdist 3.8 cannot add the group, and the engines then killed each other)."""
    if not getattr(session.config.option, "loadgroup", False):
        return
    lost = [i.nodeid for i in session.items if i.get_closest_marker("xdist_group") and "@" not in i.nodeid]
    if lost:
        raise pytest.UsageError(f"pytest-xdist did not group {lost[0]} (and {len(lost) - 1} more): this pytest and "
                                "pytest-xdist do not work together (pyproject.toml pins pytest below 9.2)")


@pytest.fixture(scope="session")
def llama_tree() -> Path:
    """llama.cpp's converter, provisioned the way `orch build` does it (pip sdist, cached)."""
    return llamacpp.locate(None).root


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch, llama_tree):
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "cache"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "data"))
    monkeypatch.setenv(llamacpp.ENV_OVERRIDE, str(llama_tree))
    monkeypatch.setenv("OLLAMA_HOST", "http://127.0.0.1:9")  # nothing listens: builds must say so and go on
    return home


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """make_tiny_checkpoint(layers, fmt=..., ...) once per distinct set of arguments."""
    made: dict[tuple, Path] = {}
    root = tmp_path_factory.mktemp("checkpoints")

    def make(layers: int = 32, **kw) -> Path:
        key = (layers, *sorted(kw.items()))
        if key not in made:
            name = f"baichuan-{layers}L-" + "-".join(f"{k}{v}" for k, v in sorted(kw.items()))
            made[key] = make_tiny_checkpoint(root / name.rstrip("-"), layers, **kw)
        return made[key]

    return make


@pytest.fixture(scope="session")
def built(tmp_path_factory, checkpoint, llama_tree):
    """`orch build DIR --quant ...` run once per (layers, quants, checkpoint options); returns the output directory."""
    done: dict[tuple, Path] = {}
    root = tmp_path_factory.mktemp("builds")

    def build(layers: int = 32, quants: str = "f32,f16,q8_0,q4_K_M", **kw) -> Path:
        key = (layers, quants, *sorted(kw.items()))
        if key not in done:
            out = root / (f"{layers}L-{quants.replace(',', '-')}" + "".join(f"-{k}{v}" for k, v in sorted(kw.items())))
            env = os.environ | {"XDG_CACHE_HOME": str(root / "cache"), "XDG_DATA_HOME": str(root / "data"),
                                llamacpp.ENV_OVERRIDE: str(llama_tree), "OLLAMA_HOST": "http://127.0.0.1:9"}
            orch("build", str(checkpoint(layers, **kw)), "--quant", quants, "--no-register", "--dir", str(out), env=env)
            done[key] = out
        return done[key]

    return build


@pytest.fixture(scope="session")
def go_render(tmp_path_factory) -> Path:
    """The Go program that executes a Modelfile TEMPLATE as Ollama does (text/template)."""
    go = shutil.which("go")
    assert go, "Go is required for the chat template test: apt-get install golang-go (scripts/test does it)"
    out = tmp_path_factory.mktemp("go") / "render"
    env = os.environ | {"GOFLAGS": "-mod=mod", "GOCACHE": str(out.parent / "gocache"), "GOPATH": str(out.parent / "gopath")}
    subprocess.run([go, "build", "-o", str(out), "."], cwd=ROOT / "tests" / "gotemplate", check=True, env=env)
    return out


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


def pytest_terminal_summary(terminalreporter):
    """Show the figures tests measured (kept under tests/artifacts) at the end of the run."""
    for path in sorted(ARTIFACTS.glob("*.json")) if ARTIFACTS.is_dir() else []:
        terminalreporter.write_line(f"{path.relative_to(ROOT)}: {path.read_text().strip()}")


@pytest.fixture
def ollama_double(tmp_path, go_render):
    """A fresh Ollama API double (tests/ollama_double.py) generating with real llama.cpp; stopped after the test."""
    from support import OllamaDouble

    doubles = []

    def start(**kw) -> OllamaDouble:
        d = OllamaDouble(tmp_path / f"double-store-{len(doubles)}", go_render, **kw).start()
        doubles.append(d)
        return d

    yield start
    for d in doubles:
        d.stop()


@pytest.fixture(scope="session")
def tiny_build(built) -> Path:
    """A 32-layer tiny chat model built to Q4_K_M, the model the Ollama double serves."""
    return built(32, "q4_K_M")


@pytest.fixture
def unused_port() -> int:
    """A port nothing listens on (bound once by the kernel's choice, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ollama_cli(tmp_path, go_render, monkeypatch):
    """`ollama` on PATH: tests/ollama_cli_double.py, whose serve runs the Ollama double (a restart can be held back)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "ollama"
    script.write_text(f"#!/bin/sh\nexec {sys.executable} {ROOT / 'tests' / 'ollama_cli_double.py'} \"$@\"\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setenv("OLLAMA_DOUBLE_STORE", str(tmp_path / "ollama-store"))
    monkeypatch.setenv("OLLAMA_DOUBLE_RENDER", str(go_render))
    monkeypatch.setenv("OLLAMA_DOUBLE_HOLD", str(tmp_path / "hold-serve"))  # touch it to keep a restarted serve down
    return script


@pytest.fixture
def real_ollama_on_path(tmp_path, monkeypatch) -> Path:
    """The real Ollama (built by scripts/test with orch install-ollama) as `ollama` on PATH; returns the binary."""
    from support import real_ollama_binary

    binary = real_ollama_binary()
    bindir = tmp_path / "real-ollama-bin"
    bindir.mkdir()
    (bindir / "ollama").symlink_to(binary)  # Ollama finds lib/ollama beside its resolved path
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "ollama-models"))  # never the user's own ~/.ollama
    return binary


@pytest.fixture
def real_ollama(tmp_path):
    """Start real `ollama serve`s (each with its own store, on a loopback port); all stopped after the test."""
    from support import RealOllama

    servers = []

    def start(**kw) -> RealOllama:
        s = RealOllama(tmp_path / f"real-ollama-{len(servers)}", **kw).start()
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


@pytest.fixture
def real_served(real_ollama, tiny_build):
    """start(**kw): a real Ollama (real_ollama's options) with the tiny build registered as tiny:q4_K_M through orch register."""
    from support import serving_tiny

    return serving_tiny(real_ollama, tiny_build)


@pytest.fixture
def webui_env(monkeypatch):
    """The real Open WebUI from PyPI for the native runtime, its virtualenv cached between runs, CPU torch first."""
    from orchestrator.stack import native

    venv = Path(os.environ.get("ORCH_TEST_WEBUI_VENV") or Path.home() / ".cache" / "orch" / "test-open-webui-venv")
    monkeypatch.setenv(native.VENV_ENV, str(venv))
    monkeypatch.setenv(native.PREINSTALL_ENV, "torch==2.13.0")  # the CPU wheel: no multi-gigabyte CUDA build
    return venv


@pytest.fixture(scope="session")
def docker_engine():
    """A real dockerd (Debian's), started for the session with its own data root and socket, and stopped after it with
    the kernel put back as it was (tests/engines.py). Yields the environment that points docker, and orch, at it."""
    import engines

    env = engines.start()
    try:
        yield env
    finally:
        engines.stop()


@pytest.fixture(scope="session")
def docker_images(docker_engine):
    """orch images build, run as a user would on that engine: the tags it made (cached in the engine's data root)."""
    import json
    import time

    t = time.monotonic()
    proc = orch("images", "build", "--json", env=os.environ | docker_engine | {"ORCH_WEBUI_PREINSTALL": "torch==2.13.0"}, timeout=1800)
    made = json.loads(proc.stdout)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "images-build.json").write_text(json.dumps({"seconds": round(time.monotonic() - t, 1),
                                                             "bytes": made["sizes"]}) + "\n")
    return made["images"]
