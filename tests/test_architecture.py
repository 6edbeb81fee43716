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


def test_the_builder_never_imports_ollama_or_stack():
    """A build needs no server: the builder package stands on its own."""
    assert importing({"orchestrator.ollama", "orchestrator.stack"}, lambda m: m.startswith("builder/")) == {}


def test_no_module_shadows_the_standard_library():
    """A module named like a standard one (inspect, say) is imported in its place by code beside it."""
    import sys

    shadowing = {m for m in modules() if Path(m).stem in sys.stdlib_module_names}
    assert shadowing == set()


def test_the_runtime_protocol_is_a_leaf():
    """stack/runtime.py holds the protocol and its records; choosing a runtime (stack/choice.py) imports the runtimes."""
    assert importing({"orchestrator.stack.docker", "orchestrator.stack.native", "orchestrator.stack.kubernetes",
                      "orchestrator.stack.choice"}, lambda m: m == "stack/runtime.py") == {}


def test_nothing_imports_the_cli():
    """The CLI sits on top; `python -m orchestrator` (__main__.py) is its other door."""
    assert importing({"orchestrator.cli"}, lambda m: not m.startswith("cli/") and m != "__main__.py") == {}


def test_only_the_http_module_opens_connections():
    """orchestrator/transport.py owns the transport (its bounds, its errors); the official `ollama` client is used by the Ollama
    client alone, on that transport."""
    assert importing(HTTP_LIBRARIES - {"ollama"}, lambda m: m != "transport.py") == {}
    assert importing({"ollama"}, lambda m: m != "ollama/client.py") == {}


def test_the_clients_stand_below_the_stack():
    """Talking to Ollama or to Open WebUI needs no stack: neither package imports stack/ (or the other's client)."""
    assert importing({"orchestrator.stack"}, lambda m: m.startswith(("ollama/", "webui/"))) == {}
    assert importing({"orchestrator.ollama", "orchestrator.stack", "orchestrator.builder"}, lambda m: m.startswith("webui/")) == {}


def test_shipping_needs_no_running_stack():
    """ship/ (images, and what carries a build elsewhere) takes the Ollama build and the GGUFs: it imports no stack."""
    assert importing({"orchestrator.stack", "orchestrator.ollama"}, lambda m: m.startswith("ship/")) == {}


def test_the_bundle_installer_needs_only_the_standard_library():
    """ship/unbundle.py runs on a box before orch is installed there (imported from orch's wheel by the bundle's
    install.py): it, and every orch module it imports at any depth, import nothing outside the standard library."""
    import sys

    imports = modules()

    def module_file(name: str) -> str | None:
        parts = name.split(".")[1:]
        while parts:
            for candidate in ("/".join(parts) + ".py", "/".join(parts) + "/__init__.py"):
                if candidate in imports:
                    return candidate
            parts = parts[:-1]
        return None

    seen, todo, outside = set(), ["ship/unbundle.py", "ship/bootstrap.py"], set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        for name in imports[module]:
            if name.startswith("orchestrator"):
                todo += [m for m in [module_file(name)] if m]
            elif name.split(".")[0] not in sys.stdlib_module_names | {"__future__"}:
                outside.add(f"{module}: {name}")
    assert "archive.py" in seen and outside == set()


def test_only_settings_reads_the_environment():
    """settings.py owns the environment (and the pins): no other module reads os.environ or os.getenv."""
    found = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os" \
                    and node.attr in ("environ", "getenv", "environb"):
                found.add(str(path.relative_to(PACKAGE)))
            if isinstance(node, ast.ImportFrom) and node.module == "os" and any(a.name in ("environ", "getenv") for a in node.names):
                found.add(str(path.relative_to(PACKAGE)))
    assert found == {"settings.py"}


def test_no_test_hook_pauses_the_product():
    """Tests stop a build or a restore at a step through the reporter's `reached` events, never through a hook in orch."""
    import re

    hooks = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if re.search(r"DEBUG_PAUSE|time\.sleep\(60\)", p.read_text())}
    assert hooks == set()


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
    """The same parameters, kinds, defaults and types as Runtime's, with Plan being the runtime's own plan type."""
    import typing

    from orchestrator.stack import runtime as protocol

    assert isinstance(runtime.name, str) and runtime.name
    plan_type = typing.get_type_hints(runtime.up)["plan"]
    assert isinstance(runtime.data_in_stack, bool)
    for method in ("preflight", "up", "down", "status", "logs", "running", "webui_data", "put_webui_data"):
        want_sig, got_sig = inspect.signature(getattr(protocol.Runtime, method)), inspect.signature(getattr(runtime, method))
        want_types = {k: plan_type if v is protocol.Plan else v
                      for k, v in typing.get_type_hints(getattr(protocol.Runtime, method), vars(protocol)).items()}
        got_types = typing.get_type_hints(getattr(runtime, method))
        shape = [(p.name, p.kind, p.default) for p in want_sig.parameters.values()]
        assert [(p.name, p.kind, p.default) for p in got_sig.parameters.values()] == shape, f"{runtime.__name__}.{method}{got_sig}"
        assert got_types == want_types, f"{runtime.__name__}.{method}: {got_types} is not {want_types}"


def test_every_module_the_tree_names_exists():
    """Comments, docs and templates that name a module of orch's name one that is there (moved files leave stale names)."""
    import re

    root = PACKAGE.parent
    texts = [p for pattern in ("*.md", "**/*.md", "**/*.py", "**/*.yaml", "**/*.sh", "scripts/*") for p in root.glob(pattern)
             if p.is_file() and ".venv" not in p.parts and "artifacts" not in p.parts]
    stale = {f"{p.relative_to(root)}: {ref}" for p in texts for ref in re.findall(r"\borchestrator/[\w/]+\.py\b", p.read_text(errors="replace"))
             if not (root / ref).is_file()}
    assert stale == set()


def test_nothing_outside_the_runtimes_asks_which_runtime_it_is():
    """Backup, restore, rollback and upgrade go through the Runtime protocol: no branch on a runtime's name (but in
    `orch up --dry-run`, which prints each runtime's own plan and starts nothing)."""
    import re

    asking = re.compile(r"""\.name\s*[!=]=\s*["'](docker|native|kubernetes)["']""")
    places = [p for p in PACKAGE.rglob("*.py") if p.parent.name in ("cli", "stack")]
    found = {f"{p.relative_to(PACKAGE)}: {line.strip()}" for p in places for line in p.read_text().splitlines() if asking.search(line)}
    assert found == {'cli/stack.py: if chosen.name == "native":'}, "only the dry run's choice of what to print"


def test_the_pins_pip_reads_are_the_pins_orch_checks():
    """One llama.cpp: the converter, the bindings and the compiled tree all come from the one sdist settings.py pins by
    hash, so pip must not install llama-cpp-python beside it (a second compile, of whatever release pip picks)."""
    import tomllib

    from orchestrator import settings

    deps = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not [d for d in deps if d.lower().replace("_", "-").startswith("llama-cpp-python")], deps
    assert set(settings.OLLAMA_MODULE_H1) == {settings.OLLAMA_SOURCE_VERSION}, "the release orch builds has its hash pinned"
    assert settings.OLLAMA_VERSION == settings.OLLAMA_SOURCE_VERSION, "the image runs the release the tests run"
