"""The package rules that keep the tree readable, checked on every module's imports (function-level ones included)."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "orchestrator"
HTTP_LIBRARIES = {"httpx", "ollama", "requests", "urllib.request", "http.client", "aiohttp"}


def modules() -> dict[str, set[str]]:
    """Every module of orchestrator/ (as a path relative to it) and the modules it imports."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        out[str(path.relative_to(PACKAGE))] = imported
    return out


def importing(prefixes: set[str], where=lambda module: True) -> dict[str, list[str]]:
    found = {}
    for module, imported in modules().items():
        hits = sorted(i for i in imported if any(i == p or i.startswith(p + ".") for p in prefixes))
        if hits and where(module):
            found[module] = hits
    return found


def test_build_never_imports_ollama_or_stack():
    """A build needs no server: the build package stands on its own."""
    assert importing({"orchestrator.ollama", "orchestrator.stack"}, lambda m: m.startswith("build/")) == {}


def test_nothing_imports_the_cli():
    """The CLI sits on top; `python -m orchestrator` (__main__.py) is its other door."""
    assert importing({"orchestrator.cli"}, lambda m: not m.startswith("cli/") and m != "__main__.py") == {}


def test_every_http_call_goes_through_the_ollama_client():
    """Only ollama/client.py opens connections: one owner for the host, the session and the error text."""
    assert importing(HTTP_LIBRARIES, lambda m: m != "ollama/client.py") == {}


def test_only_the_cli_renders():
    """The library reports progress through orchestrator.events; Rich is the CLI's (rich.filesize is a formatter, not a renderer)."""
    found = importing({"rich"}, lambda m: not m.startswith("cli/"))
    assert {m: [i for i in hits if not i.startswith("rich.filesize")] for m, hits in found.items()} == {m: [] for m in found}


def runtimes():
    from orchestrator.stack.docker import DockerRuntime
    from orchestrator.stack.kubernetes.runtime import KubernetesRuntime
    from orchestrator.stack.native import NativeRuntime

    return [DockerRuntime, NativeRuntime, KubernetesRuntime]


@pytest.mark.parametrize("runtime", runtimes(), ids=lambda r: r.__name__)
def test_each_runtime_implements_the_one_protocol(runtime):
    from orchestrator.stack.runtime import Runtime

    assert isinstance(runtime.name, str) and runtime.name
    for method in ("preflight", "up", "down", "status", "logs"):
        want = list(inspect.signature(getattr(Runtime, method)).parameters)
        got = list(inspect.signature(getattr(runtime, method)).parameters)
        assert got == want, f"{runtime.__name__}.{method}{got} is not Runtime.{method}{want}"
