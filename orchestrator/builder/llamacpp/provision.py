"""Provision llama.cpp's converter from a pinned release, through the package registry.

The llama-cpp-python sdist carries a complete llama.cpp tree, so the converter
arrives through PyPI (or the user's PyPI mirror: PIP_INDEX_URL or pip's own
configuration) where GitHub is slow or unreachable. It is fetched as a plain
file, never through pip (which would run the sdist's build backend), and used
only when its sha256 is the pinned one. The same sdist's Python bindings
(`llama_cpp`, ctypes) are kept beside the tree: runtime.py loads them over
orch's own compile of that tree, so pip compiles nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from orchestrator import paths, settings, transport
from orchestrator.errors import OrchError
from orchestrator.events import SILENT, Reporter
from orchestrator.files import sha256_file
from orchestrator.settings import LLAMA_CPP_PYTHON_VERSION

SDIST_BYTES, SDIST_SHA256 = settings.LLAMA_CPP_SDIST_BYTES, settings.LLAMA_CPP_SDIST_SHA256
ENV_OVERRIDE, ENV_SDIST = settings.LLAMA_CPP_ENV, settings.LLAMA_CPP_SDIST_ENV
# the whole tree but what no build reads: the converter and gguf-py, and the sources the imatrix tool compiles from
_SKIPPED = ("models/", "docs/", "media/", ".github/")
BINDINGS = "llama-cpp-python"  # the sdist's llama_cpp package (server/ left out) lands in this folder of the tree


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

    @property
    def bindings(self) -> Path:
        """The folder holding the release's `llama_cpp` package (only in orch's provisioned tree)."""
        return self.root / BINDINGS

    def describe(self) -> dict:
        return {"version": self.version, "origin": self.origin, "path": str(self.root), "sdist_sha256": self.sdist_sha256}


def locate(override: Path | None = None, *, reporter: Reporter = SILENT) -> LlamaCpp:
    """The tree named by --llama-cpp or $ORCH_LLAMA_CPP, else the cached pinned release (fetched once)."""
    override = override or settings.llama_cpp_tree()
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


def complete(root: Path) -> bool:
    """Whether `root` holds a whole provisioned release: the tree, its provenance and the bindings."""
    return all((root / f).is_file() for f in ("orch-provenance.json", "convert_hf_to_gguf.py", "CMakeLists.txt",
                                              f"{BINDINGS}/llama_cpp/llama_cpp.py"))


def provision(*, reporter: Reporter = SILENT) -> LlamaCpp:
    final = cache_dir()
    meta = final / "orch-provenance.json"
    if complete(final):
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
    """The pinned sdist, checked against its pinned sha256: downloaded as a plain file (nothing in it runs), or the one the
    user named."""
    name = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"
    local = settings.llama_cpp_sdist()
    if local is not None:
        if not local.is_file():
            raise OrchError(f"{ENV_SDIST}={local} is not a file: point it at {name}")
        if (got := sha256_file(local)) != SDIST_SHA256:
            raise OrchError(f"{local} is not the {name} orch pins (sha256 {got[:16]}…, pinned {SDIST_SHA256[:16]}…): "
                            f"download it again from PyPI, or unset {ENV_SDIST}")
        return local
    index = settings.pip_index()
    reporter.note(f"Fetching llama.cpp's converter (llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} sdist, once) from {_shown(index)}…")
    advice = (f"set PIP_INDEX_URL to a reachable PyPI mirror, or {ENV_SDIST} to a downloaded {name}, or --llama-cpp to a "
              "llama.cpp tree")
    try:
        url = sdist_url(index, name)
        dest = tmp / name
        with reporter.task("download llama.cpp (sdist)", total=SDIST_BYTES, unit="bytes") as task:
            transport.download(url, dest, size=SDIST_BYTES, sha256=SDIST_SHA256, advance=task.advance)
    except transport.BadAnswer as e:
        raise OrchError(f"refused the llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} sdist from {_shown(index)}: {e}. {advice}") from None
    except (transport.Refused, transport.TransportError) as e:
        why = str(e) if isinstance(e, transport.Refused) else transport.explain(e)
        raise OrchError(f"could not download the llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} sdist ({why}): {advice}") from None
    return dest


def sdist_url(index: str, name: str) -> str:
    """Where the index's project page (PEP 503 HTML or PEP 691 JSON) says `name` is; its own sha256, when it lists one,
    must be the pin."""
    from html.parser import HTMLParser
    from urllib.parse import urldefrag, urljoin

    page = index.rstrip("/") + "/llama-cpp-python/"
    r = transport.get(page, bounds=transport.Bounds(max_bytes=16 << 20, read=60, total=120, retries=2),
                 headers={"Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1"})
    if r.status_code != 200:
        raise transport.Refused(r.status_code, f"{_shown(page)} answered HTTP {r.status_code}")
    links: list[tuple[str, str]] = []
    if "json" in r.headers.get("content-type", ""):
        files = [f for f in transport.json_object(r, _shown(page)).get("files", []) if isinstance(f, dict)]
        links = [(str(f.get("filename", "")), str(f.get("url", ""))) for f in files]
        listed = {f.get("filename"): (f.get("hashes") or {}).get("sha256") for f in files}
    else:
        class Anchors(HTMLParser):
            def handle_starttag(self, tag, attrs):
                href = dict(attrs).get("href")
                if tag == "a" and href:
                    links.append((urldefrag(href)[0].rsplit("/", 1)[-1], href))

        Anchors().feed(r.text)
        listed = {n: urldefrag(href)[1].partition("sha256=")[2] or None for n, href in links}
    found = next((urljoin(str(r.url), href) for filename, href in links if filename == name), None)
    if found is None:
        raise transport.Refused(404, f"{_shown(page)} does not list {name}")
    if listed.get(name) and listed[name] != SDIST_SHA256:
        raise transport.BadAnswer(f"the index lists {name} with sha256 {listed[name][:16]}…, not the pinned {SDIST_SHA256[:16]}…")
    return urldefrag(found)[0]


def _shown(url: str) -> str:
    return transport.split_credentials(url)[0]


def _extract(sdist: Path, dest: Path, reporter: Reporter = SILENT) -> None:
    """The vendored llama.cpp tree into `dest`, and the bindings (llama_cpp/, without its server) into dest/BINDINGS."""
    with tarfile.open(sdist) as tar:
        members = []
        for m in tar.getmembers():
            parts = m.name.split("/", 1)
            if len(parts) < 2 or not (m.isfile() or m.isdir()):
                continue
            if parts[1].startswith("vendor/llama.cpp/"):
                rel = parts[1][len("vendor/llama.cpp/"):]
                if not rel or rel.startswith(_SKIPPED):
                    continue
            elif parts[1].startswith("llama_cpp/") and not parts[1].startswith("llama_cpp/server/"):
                rel = f"{BINDINGS}/{parts[1]}"
            else:
                continue
            m.name = rel
            members.append(m)
        names = {m.name for m in members}
        if "convert_hf_to_gguf.py" not in names or f"{BINDINGS}/llama_cpp/llama_cpp.py" not in names:
            raise OrchError(f"{sdist.name} holds no vendor/llama.cpp/convert_hf_to_gguf.py or llama_cpp/llama_cpp.py: it is not a "
                            "llama-cpp-python sdist")
        with reporter.task("unpack llama.cpp", total=len(members), unit="files") as task:
            for m in members:
                tar.extract(m, dest, filter="data")
                task.advance(1)


def _tree_version(root: Path) -> str:
    prov = root / "orch-provenance.json"
    if prov.is_file():
        return json.loads(prov.read_text())["version"]
    return f"llama.cpp tree at {root}"
