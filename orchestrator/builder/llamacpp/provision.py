"""Provision llama.cpp's converter from a pinned release, through the package registry.

The llama-cpp-python sdist carries a complete llama.cpp tree, so the converter
arrives through PyPI (or the user's PyPI mirror, via pip's own configuration)
where GitHub is slow or unreachable. Its quantizer and runtime come from the
same release, installed as the `llama-cpp-python` dependency.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from orchestrator import paths
from orchestrator.builder.llamacpp.process import last_error_line, run_watched
from orchestrator.errors import OrchError
from orchestrator.events import SILENT, Reporter
from orchestrator.files import sha256_file

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
SDIST_BYTES = 76_589_250  # its size on PyPI: the download bar's total (pip itself reports nothing when not on a terminal)
ENV_OVERRIDE = "ORCH_LLAMA_CPP"
ENV_SDIST = "ORCH_LLAMA_CPP_SDIST"
# the whole tree but what no build reads: the converter and gguf-py, and the sources the imatrix tool compiles from
_SKIPPED = ("models/", "docs/", "media/", ".github/")


@dataclass(frozen=True)
class LlamaCpp:
    """A llama.cpp tree that holds `convert_hf_to_gguf.py`, and where it came from."""

    root: Path
    version: str
    origin: str
    sdist_sha256: str | None = None

    @property
    def converter(self) -> Path:
        return self.root / "convert_hf_to_gguf.py"

    def describe(self) -> dict:
        return {"version": self.version, "origin": self.origin, "path": str(self.root), "sdist_sha256": self.sdist_sha256}


def locate(override: Path | None = None, *, reporter: Reporter = SILENT) -> LlamaCpp:
    """The tree named by --llama-cpp or $ORCH_LLAMA_CPP, else the cached pinned release (fetched once)."""
    override = override or (Path(os.environ[ENV_OVERRIDE]) if os.environ.get(ENV_OVERRIDE) else None)
    if override is not None:
        root = Path(override).expanduser().resolve()
        if (root / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py").is_file():
            root = root / "vendor" / "llama.cpp"
        if not (root / "convert_hf_to_gguf.py").is_file():
            raise OrchError(f"{root} has no convert_hf_to_gguf.py: point --llama-cpp at a llama.cpp checkout")
        return LlamaCpp(root=root, version=_tree_version(root), origin=f"local tree {root}")
    return provision(reporter=reporter)


def cache_dir() -> Path:
    return paths.cache_home() / "llama.cpp" / f"llama-cpp-python-{LLAMA_CPP_PYTHON_VERSION}"


def provision(*, reporter: Reporter = SILENT) -> LlamaCpp:
    final = cache_dir()
    meta = final / "orch-provenance.json"
    if meta.is_file() and (final / "convert_hf_to_gguf.py").is_file() and (final / "CMakeLists.txt").is_file():
        info = json.loads(meta.read_text())
        return LlamaCpp(root=final, version=info["version"], origin=info["origin"], sdist_sha256=info["sdist_sha256"])

    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=".provision-") as tmp:
        tmp = Path(tmp)
        sdist = _obtain_sdist(tmp, reporter)
        digest = sha256_file(sdist)
        tree = tmp / "tree"
        _extract(sdist, tree, reporter)
        version = f"llama.cpp vendored in llama-cpp-python {LLAMA_CPP_PYTHON_VERSION}"
        info = {"version": version, "origin": f"PyPI sdist {sdist.name}", "sdist_sha256": digest}
        (tree / "orch-provenance.json").write_text(json.dumps(info, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tree, final)
    return LlamaCpp(root=final, version=version, origin=info["origin"], sdist_sha256=digest)


def _obtain_sdist(tmp: Path, reporter: Reporter) -> Path:
    local = os.environ.get(ENV_SDIST)
    if local:
        path = Path(local).expanduser()
        if not path.is_file():
            raise OrchError(f"{ENV_SDIST}={local} is not a file: point it at llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz")
        return path
    reporter.note(f"Fetching llama.cpp's converter (llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} sdist, once)…")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--disable-pip-version-check", "-q", "-d", str(tmp), f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"]
    scratch = tmp / "pip-tmp"  # pip downloads into a temporary directory first: its growth there is the bar
    scratch.mkdir()
    log = tmp / "pip.log"
    try:
        run_watched(cmd, watch=lambda: _sdist_bytes(tmp), expected_bytes=SDIST_BYTES, what="download llama.cpp (sdist)", log=log,
                    reporter=reporter, env=os.environ | {"TMPDIR": str(scratch)})
        failure = None
    except OrchError:
        failure = last_error_line(log)
    found = sorted(tmp.glob("llama_cpp_python-*.tar.gz"))
    if failure or not found:
        raise OrchError(
            f"could not download the llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} sdist ({failure or 'pip wrote no sdist'}): "
            f"set PIP_INDEX_URL to a reachable PyPI mirror, or {ENV_SDIST} to a downloaded sdist, or --llama-cpp to a llama.cpp tree"
        )
    return found[0]


def _sdist_bytes(tmp: Path) -> int:
    """How much of the sdist pip has written so far, wherever in `tmp` it is (pip's own directories come and go)."""
    sizes = [0]
    for folder, _, files in os.walk(tmp):  # errors from a vanished directory are ignored
        for name in files:
            if name.startswith("llama_cpp_python-") and name.endswith(".tar.gz"):
                try:
                    sizes.append(os.stat(os.path.join(folder, name)).st_size)
                except OSError:
                    pass
    return max(sizes)


def _extract(sdist: Path, dest: Path, reporter: Reporter = SILENT) -> None:
    with tarfile.open(sdist) as tar:
        members = []
        for m in tar.getmembers():
            parts = m.name.split("/", 1)
            if len(parts) < 2 or not parts[1].startswith("vendor/llama.cpp/"):
                continue
            rel = parts[1][len("vendor/llama.cpp/"):]
            if rel and not rel.startswith(_SKIPPED) and (m.isfile() or m.isdir()):
                m.name = rel
                members.append(m)
        if not any(m.name == "convert_hf_to_gguf.py" for m in members):
            raise OrchError(f"{sdist.name} holds no vendor/llama.cpp/convert_hf_to_gguf.py: it is not a llama-cpp-python sdist")
        with reporter.task("unpack llama.cpp", total=len(members), unit="files") as task:
            for m in members:
                tar.extract(m, dest, filter="data")
                task.advance(1)


def _tree_version(root: Path) -> str:
    prov = root / "orch-provenance.json"
    if prov.is_file():
        return json.loads(prov.read_text())["version"]
    return f"llama.cpp tree at {root}"
