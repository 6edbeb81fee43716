"""`orch install-ollama`: the failures a user meets before the long build, and where the built Ollama is found.

The build itself runs in scripts/test (the suite's real Ollama is its result); a test here checks that result.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from orchestrator.settings import OLLAMA_SOURCE_VERSION
from support import cli, real_ollama_binary


def nothing_installed(home: Path) -> bool:
    root = home / "data" / "orch" / "ollama"
    return not root.exists() or not any(p.name == "ollama" and p.is_file() for p in root.rglob("*"))


def test_missing_tools_are_named_in_one_line_with_where_to_get_them(tmp_path, isolated_home):
    empty = tmp_path / "empty-path"
    empty.mkdir()
    (empty / "python3").symlink_to(sys.executable)
    proc = cli("install-ollama", check=False, env=os.environ | {"PATH": str(empty)})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: building Ollama needs Go 1.21 or newer") and "a C++ compiler (apt-get install g++)" in lines[0]
    assert nothing_installed(isolated_home)


@contextlib.contextmanager
def go_proxy(files: dict[str, bytes]):
    """A Go module proxy on loopback that serves `files` by path and 404s everything else: a mirror orch does not control."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = files.get(self.path)
            self.send_response(200 if body is not None else 404)
            body = body if body is not None else b"not found: this mirror does not have it"
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


@pytest.fixture
def empty_proxy():
    """A mirror without Ollama's module."""
    with go_proxy({}) as url:
        yield url


def install_through(proxy: str, modcache: Path, goflags: str = "") -> tuple[subprocess.CompletedProcess, list[str]]:
    """orch install-ollama with GOPROXY at `proxy` and Go's checksum database turned off, as a user's settings may."""
    proc = cli("install-ollama", check=False, env=os.environ | {"GOPROXY": proxy, "GOMODCACHE": str(modcache), "GOFLAGS": goflags,
                                                               "GONOSUMDB": "*", "GOSUMDB": "off"})
    return proc, proc.stderr.strip().splitlines()


def test_a_proxy_without_the_module_is_one_line_naming_goproxy_before_anything_compiles(empty_proxy, tmp_path, isolated_home):
    proc, lines = install_through(empty_proxy, tmp_path / "modcache")
    assert proc.returncode == 1 and lines[-1].startswith(f"error: the Go module proxy did not give github.com/ollama/ollama@v{OLLAMA_SOURCE_VERSION}"), \
        proc.stderr
    assert "Set GOPROXY to a mirror that serves it" in lines[-1]
    assert "compile" not in proc.stdout + proc.stderr, "it stopped before compiling anything"
    assert nothing_installed(isolated_home)


def test_the_built_ollama_is_the_pinned_release_in_ollamas_own_layout():
    """What scripts/test built with orch install-ollama: the real Ollama the other tests use."""
    binary = real_ollama_binary()
    home = binary.parent.parent
    assert home.name == OLLAMA_SOURCE_VERSION and (home / "lib" / "ollama" / "llama-server").is_file()
    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True, env=os.environ | {"OLLAMA_HOST": "127.0.0.1:9"})
    assert f"client version is {OLLAMA_SOURCE_VERSION}" in version.stdout + version.stderr, version.stdout + version.stderr
    from orchestrator.ollama import vulns

    assert [a.cve for a in vulns.affecting(OLLAMA_SOURCE_VERSION) if not a.unpatched] == [], "a release fixes what it is open to"
    provenance = json.loads((home / "orch-provenance.json").read_text())
    assert provenance["ollama"] == f"github.com/ollama/ollama@v{OLLAMA_SOURCE_VERSION} from the Go module proxy"
    objdump = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(home / "lib" / "ollama" / "llama-server")],
                             capture_output=True, text=True)
    assert objdump.returncode == 0 and "ldtilecfg" not in objdump.stdout, "llama-server must not carry llama.cpp's AMX path"


def test_native_up_runs_the_built_ollama_when_none_is_on_path(tmp_path, monkeypatch):
    """orch up --runtime native --dry-run names the Ollama orch built when PATH has none."""
    binary = real_ollama_binary()
    data = tmp_path / "data"
    (data / "orch" / "ollama").mkdir(parents=True)
    (data / "orch" / "ollama" / OLLAMA_SOURCE_VERSION).symlink_to(binary.parent.parent)
    path = tmp_path / "bin"
    path.mkdir()
    env = os.environ | {"XDG_DATA_HOME": str(data), "PATH": f"{path}:{Path(sys.executable).parent}:/usr/bin:/bin"}
    assert subprocess.run(["sh", "-c", "command -v ollama"], env=env).returncode != 0
    proc = cli("up", "--runtime", "native", "--dry-run", "--no-webui", "--dir", str(tmp_path / "stack"), env=env)
    assert f"ollama binary: {data / 'orch' / 'ollama' / OLLAMA_SOURCE_VERSION / 'bin' / 'ollama'}" in proc.stdout, proc.stdout


@pytest.fixture
def forging_proxy():
    """A Go module proxy that serves its own github.com/ollama/ollama at the pinned version: a hostile or broken mirror."""
    import io
    import zipfile

    prefix = f"github.com/ollama/ollama@v{OLLAMA_SOURCE_VERSION}"
    mod = b"module github.com/ollama/ollama\n\ngo 1.22\n"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(f"{prefix}/go.mod", mod)
        z.writestr(f"{prefix}/main.go", b'package main\n\nfunc main() { println("not ollama") }\n')
    files = {f"/github.com/ollama/ollama/@v/v{OLLAMA_SOURCE_VERSION}.info": json.dumps({"Version": f"v{OLLAMA_SOURCE_VERSION}",
                                                                                        "Time": "2024-08-01T00:00:00Z"}).encode(),
             f"/github.com/ollama/ollama/@v/v{OLLAMA_SOURCE_VERSION}.mod": mod,
             f"/github.com/ollama/ollama/@v/v{OLLAMA_SOURCE_VERSION}.zip": buf.getvalue()}
    with go_proxy(files) as url:
        yield url


def test_a_forged_module_is_refused_before_anything_compiles_whatever_the_checksum_settings(forging_proxy, tmp_path, isolated_home):
    """GOSUMDB=off and GONOSUMDB turn Go's own check off: orch's pinned hash still refuses what the proxy made up."""
    proc, lines = install_through(forging_proxy, tmp_path / "modcache", goflags="-mod=mod")
    assert proc.returncode == 1, proc.stderr
    assert lines[-1].startswith(f"error: github.com/ollama/ollama@v{OLLAMA_SOURCE_VERSION} as downloaded is not the release orch pins"), \
        proc.stderr
    assert "GOSUMDB=off" in proc.stdout + proc.stderr, "the settings that turned Go's check off are named"
    assert "compile" not in proc.stdout + proc.stderr and nothing_installed(isolated_home)
    leftovers = list((isolated_home / "data" / "orch" / "ollama").glob(".*")) if (isolated_home / "data" / "orch" / "ollama").exists() else []
    assert leftovers == [], "the copy it checked is gone"


def test_a_module_cache_others_can_write_is_refused(tmp_path, isolated_home):
    shared = tmp_path / "shared-modcache"
    shared.mkdir()
    shared.chmod(0o777)
    proc = cli("install-ollama", check=False, env=os.environ | {"GOMODCACHE": str(shared)})
    assert proc.returncode == 1 and f"Go's module cache {shared} can be written by other users" in proc.stderr, proc.stderr
    assert "set GOMODCACHE to a directory of your own" in proc.stderr and nothing_installed(isolated_home)
