"""The first build fetches llama.cpp's converter from whatever index pip is pointed at, as a plain file checked
against its pinned sha256, and shows it.

The index here is a loopback PEP 503 index (a double of PyPI or a mirror) serving a small sdist shaped like
llama-cpp-python's. The pin is set to that sdist's own hash for these tests; the real pin meets the real PyPI in
scripts/test's first build.
"""

from __future__ import annotations

import functools
import hashlib
import io
import tarfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from orchestrator.builder.llamacpp import provision
from orchestrator.errors import OrchError
from support import Recording

VENDORED = {"convert_hf_to_gguf.py": b"# the converter\n", "CMakeLists.txt": b"project(llama)\n",
            "gguf-py/gguf/__init__.py": b"", "src/llama.cpp": b"// runtime\n", "docs/build.md": b"not unpacked\n"}
BINDINGS = {"llama_cpp/__init__.py": b"from .llama_cpp import *\n", "llama_cpp/llama_cpp.py": b"# ctypes\n",
            "llama_cpp/server/app.py": b"not unpacked\n"}
NAME = f"llama_cpp_python-{provision.LLAMA_CPP_PYTHON_VERSION}"


def sdist(members: dict[str, bytes], ran: str) -> bytes:
    """An sdist whose build backend, if anything ran it, would leave a file at `ran`."""
    backend = f"open({ran!r}, 'w').write('the build backend ran')\n".encode()
    pyproject = b'[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n'
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for rel, data in ({"pyproject.toml": pyproject, "backend.py": backend, "setup.py": backend}
                          | {f"vendor/llama.cpp/{k}": v for k, v in members.items()} | BINDINGS).items():
            info = tarfile.TarInfo(f"{NAME}/{rel}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A PyPI mirror holding one llama-cpp-python sdist, named by PIP_INDEX_URL as a user would; the pin is its hash."""
    root = tmp_path / "mirror"
    project = root / "simple" / "llama-cpp-python"
    project.mkdir(parents=True)
    data = sdist(VENDORED, str(tmp_path / "backend-ran"))
    (project / f"{NAME}.tar.gz").write_bytes(data)
    (project / "index.html").write_text(f'<html><body><a href="{NAME}.tar.gz">{NAME}.tar.gz</a></body></html>')
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(SimpleHTTPRequestHandler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{server.server_port}/simple")
    monkeypatch.setattr(provision, "SDIST_SHA256", hashlib.sha256(data).hexdigest())
    monkeypatch.setattr(provision, "SDIST_BYTES", len(data))
    yield root
    server.shutdown()


def test_the_first_fetch_shows_the_download_and_the_unpacking_and_runs_nothing(mirror, tmp_path):
    reporter = Recording()
    llama = provision.provision(reporter=reporter)
    assert llama.converter.read_bytes() == VENDORED["convert_hf_to_gguf.py"] and llama.origin.startswith("PyPI sdist")
    assert llama.sdist_sha256 == provision.SDIST_SHA256
    assert not (llama.root / "docs").exists(), "what no build reads is not unpacked"
    assert (llama.bindings / "llama_cpp" / "llama_cpp.py").read_bytes() == BINDINGS["llama_cpp/llama_cpp.py"], "the release's bindings"
    assert not (llama.bindings / "llama_cpp" / "server").exists(), "nor the bindings' web server"
    assert not (tmp_path / "backend-ran").exists(), "a download runs nothing the sdist holds"
    download, unpack = reporter.bars
    assert download["unit"] == "bytes" and download["total"] == provision.SDIST_BYTES
    assert unpack["unit"] == "files" and unpack["total"] == 6 and unpack["completed"] == [1, 2, 3, 4, 5, 6]

    again = Recording()
    assert provision.provision(reporter=again) == llama and again.bars == [], "once per machine: the second build fetches nothing"


def test_a_mirror_without_it_names_the_fix(mirror):
    (mirror / "simple" / "llama-cpp-python" / "index.html").write_text("<html><body></body></html>")
    with pytest.raises(OrchError, match=r"could not download the llama-cpp-python .* set PIP_INDEX_URL to a reachable PyPI mirror"):
        provision.provision()
    assert not provision.cache_dir().exists()


def test_an_sdist_that_is_not_the_pinned_one_is_refused_and_nothing_is_kept(mirror, tmp_path):
    forged = sdist(VENDORED | {"convert_hf_to_gguf.py": b"import os  # someone else's converter\n"}, str(tmp_path / "ran"))
    (mirror / "simple" / "llama-cpp-python" / f"{NAME}.tar.gz").write_bytes(forged[:provision.SDIST_BYTES].ljust(provision.SDIST_BYTES, b"\0"))
    with pytest.raises(OrchError, match=r"refused the llama-cpp-python .* sdist from http://127.0.0.1:\d+/simple: .* is not the pinned "
                                        r"file: .* bytes with sha256"):
        provision.provision()
    assert not provision.cache_dir().exists() and not list(provision.cache_dir().parent.glob(".provision-*"))


def test_an_index_that_lists_another_hash_is_refused_before_the_download(mirror):
    index = mirror / "simple" / "llama-cpp-python" / "index.html"
    index.write_text(f'<html><body><a href="{NAME}.tar.gz#sha256={"0" * 64}">{NAME}.tar.gz</a></body></html>')
    reporter = Recording()
    with pytest.raises(OrchError, match=r"the index lists .* with sha256 0000000000000000…, not the pinned"):
        provision.provision(reporter=reporter)
    assert reporter.bars == [], "nothing was downloaded"


def test_a_local_sdist_is_checked_against_the_pin_too(mirror, tmp_path, monkeypatch):
    mine = tmp_path / f"{NAME}.tar.gz"
    mine.write_bytes(b"not the release")
    monkeypatch.setenv(provision.ENV_SDIST, str(mine))
    with pytest.raises(OrchError, match=rf"{mine} is not the {NAME}.tar.gz orch pins .*: download it again from PyPI, or unset "
                                        rf"{provision.ENV_SDIST}"):
        provision.provision()
