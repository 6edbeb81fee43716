"""One compile of a llama.cpp tree for everything orch runs of it: the libraries its bindings load, then the programs.

llama-cpp-python compiled the pinned tree inside pip (8 minutes on 2 cores, the
longest step of a first install), and orch compiled the same tree again for
llama-imatrix, llama-quantize and llama-server. Now one CMake build directory
is kept per tree and options: shared libraries, each finding the others beside
it ($ORIGIN), so the programs, compiled later if ever, reuse every object the
libraries compiled. One build at a time per directory (a lock), and whatever a
killed build left is picked up by the next (CMake's own incremental build).
Everything is compiled for this CPU with llama.cpp's AMX path off (cpu.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import sys
from pathlib import Path
from typing import Iterator

from orchestrator import paths
from orchestrator.builder.llamacpp import cpu
from orchestrator.builder.llamacpp.process import run_watched
from orchestrator.builder.llamacpp.provision import LlamaCpp
from orchestrator.errors import OrchError
from orchestrator.events import SILENT, Reporter

CMAKE_OPTIONS = ["-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=ON",
                 "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_SUBPROCESS=OFF", "-DLLAMA_BUILD_APP=OFF",
                 "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DGGML_NATIVE=ON",
                 # shared, one file per library named as it is loaded (no version links, which a copy or a bundle loses),
                 # each finding the others in its own folder wherever that folder is moved
                 "-DBUILD_SHARED_LIBS=ON", "-DCMAKE_PLATFORM_NO_VERSIONED_SONAME=ON", "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON",
                 "-DCMAKE_INSTALL_RPATH=$ORIGIN", *cpu.cmake_flags()]


def cmake_path() -> str | None:
    beside = Path(sys.executable).with_name("cmake")  # pip install cmake puts it beside the interpreter
    return shutil.which("cmake") or (str(beside) if beside.is_file() else None)


def cmake() -> str:
    found = cmake_path()
    compiler = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if not found or not compiler or not (shutil.which("make") or shutil.which("ninja")):
        raise OrchError("compiling llama.cpp needs cmake, make and a C++ compiler: apt-get install cmake make g++ "
                        "(or pip install cmake), then run the command again")
    return found


def options(cuda: bool) -> list[str]:
    return [*CMAKE_OPTIONS, *(["-DGGML_CUDA=ON", "-DCMAKE_CUDA_ARCHITECTURES=native"] if cuda else [])]


def key(llama: LlamaCpp, cuda: bool) -> str:
    return hashlib.sha256(f"{llama.version}|{llama.root}|{' '.join(options(cuda))}".encode()).hexdigest()[:12]


def home(llama: LlamaCpp) -> Path:
    """Where compiled things for this tree live: beside orch's own provisioned tree (shared by every build that uses
    it), else in orch's cache."""
    provisioned = (llama.root / "orch-provenance.json").is_file()
    return llama.root.parent if provisioned else paths.cache_home() / "llama.cpp"


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """One process at a time compiles into a build directory; the others wait, then find the work done."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def build(llama: LlamaCpp, targets: tuple[str, ...], *, cuda: bool = False, what: str, reporter: Reporter = SILENT) -> Path:
    """Compile `targets` in this tree's build directory (objects another call compiled are reused); returns the folder
    the libraries and programs land in. The caller holds `locked(lock_for(...))`."""
    if not (llama.root / "CMakeLists.txt").is_file():
        raise OrchError(f"{llama.root} holds only llama.cpp's converter, not its sources: point --llama-cpp at a full llama.cpp "
                        "checkout, or leave it out to use the pinned release")
    folder, log = build_dir(llama, cuda), log_for(llama, cuda)
    steps = [("compile", [cmake(), "--build", str(folder), "--target", *targets, "-j", str(os.cpu_count() or 1)])]
    configured = (folder / "CMakeCache.txt").is_file() and any((folder / f).is_file() for f in ("Makefile", "build.ninja"))
    if not configured:  # never configured, or a configure cut short
        shutil.rmtree(folder, ignore_errors=True)
        steps.insert(0, ("configure", [cmake(), "-S", str(llama.root), "-B", str(folder), *options(cuda)]))
    for step, cmd in steps:
        run_watched(cmd, watch=None, expected_bytes=None, what=f"{step} {what}", log=log, reporter=reporter, append=True)
    return folder / "bin"


def build_dir(llama: LlamaCpp, cuda: bool) -> Path:
    return home(llama) / f"build-{key(llama, cuda)}"


def log_for(llama: LlamaCpp, cuda: bool) -> Path:
    return home(llama) / f"build-{key(llama, cuda)}.log"


def lock_for(llama: LlamaCpp, cuda: bool) -> Path:
    return home(llama) / f".build-{key(llama, cuda)}.lock"


def libraries(folder: Path) -> list[Path]:
    """The shared libraries in a compiled folder (libllama.so, libggml*.so, ...)."""
    return sorted(p for p in folder.glob("lib*.so") if p.is_file() and not p.is_symlink())
