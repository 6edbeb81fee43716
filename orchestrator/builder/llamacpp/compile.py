"""One compile of a llama.cpp tree for everything orch runs of it: the libraries its bindings load, then the programs.

llama-cpp-python compiled the pinned tree inside pip (8 minutes on 2 cores, the
longest step of a first install), and orch compiled the same tree again for
llama-imatrix, llama-quantize and llama-server. Now one CMake build directory
is kept per tree and options: shared libraries, each finding the others beside
it ($ORIGIN), so the programs, compiled later if ever, reuse every object the
libraries compiled. One build at a time per directory (a lock), and whatever a
killed build left is picked up by the next (CMake's own incremental build).
Everything is compiled for this CPU with llama.cpp's AMX path off (cpu.py).
cmake and ninja are orch's own dependencies (from PyPI, as llama-cpp-python's
pip build had them), so a C++ compiler is all a machine must bring.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator

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


def found(program: str) -> str | None:
    """`program` on PATH, else beside the interpreter, where pip puts the cmake and ninja orch depends on."""
    beside = Path(sys.executable).with_name(program)
    return shutil.which(program) or (str(beside) if beside.is_file() else None)


def missing(*, cuda: bool = False) -> list[str]:
    """What compiling llama.cpp needs and this machine lacks, each with how to get it: cmake and ninja come with orch,
    so a C++ compiler is all a machine must bring (and nvcc for --cuda)."""
    needs = []
    if not found("cmake"):
        needs.append("cmake (pip install cmake, or apt-get install cmake)")
    if not found("ninja"):
        needs.append("ninja (pip install ninja, or apt-get install ninja-build)")
    if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        needs.append("a C++ compiler (apt-get install g++)")
    if cuda and not shutil.which("nvcc"):
        needs.append("the CUDA toolkit's nvcc for --cuda (https://developer.nvidia.com/cuda-downloads; add its bin/ to PATH)")
    return needs


def build_tools(*, cuda: bool = False) -> tuple[str, str]:
    """cmake and ninja, or one line naming everything a compile lacks."""
    if needs := missing(cuda=cuda):
        raise OrchError(f"compiling llama.cpp needs {'; '.join(needs)}: install {'them' if len(needs) > 1 else 'it'}, "
                        "then run the command again")
    return str(found("cmake")), str(found("ninja"))


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


def into(home: Path, holds: tuple[str, ...], llama: LlamaCpp, targets: tuple[str, ...], fill: Callable[[Path, Path], None], *,
         cuda: bool = False, note: str, what: str, reporter: Reporter = SILENT) -> Path:
    """`home`, made the first time it is asked for: `targets` compiled in the tree's build directory (objects an earlier
    call compiled are reused), then `fill(built, staged)` lays out a staged folder that replaces `home` whole, so a
    killed compile leaves no half-filled `home`. One process at a time; the others wait, then find it made: `home` is
    made when it `holds` every one of those files."""
    def made() -> bool:
        return all((home / f).is_file() for f in holds)

    if made():
        return home
    if not (llama.root / "CMakeLists.txt").is_file():
        raise OrchError(f"{llama.root} holds only llama.cpp's converter, not its sources: point --llama-cpp at a full "
                        "llama.cpp checkout, or leave it out to use the pinned release")
    tool = build_tools(cuda=cuda)  # before anything is made: what is missing, named in one line
    with locked(lock_for(llama, cuda)):
        if made():  # another process made it meanwhile
            return home
        reporter.note(note)
        built = _build(tool, llama, targets, cuda=cuda, what=what, reporter=reporter)
        home.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=home.parent, prefix=f".{home.name}-") as tmp:
            staged = Path(tmp) / home.name
            staged.mkdir()
            fill(built, staged)
            if missed := [f for f in holds if not (staged / f).is_file()]:
                raise OrchError(f"the llama.cpp build made no {', '.join(missed)}: see {log_for(llama, cuda)}")
            shutil.rmtree(home, ignore_errors=True)
            os.replace(staged, home)
    return home


def _build(tool: tuple[str, str], llama: LlamaCpp, targets: tuple[str, ...], *, cuda: bool, what: str,
           reporter: Reporter) -> Path:
    """Compile `targets` with (cmake, ninja) in this tree's build directory; returns the folder the libraries and
    programs land in."""
    (cmake, ninja), folder, log = tool, build_dir(llama, cuda), log_for(llama, cuda)
    steps = [("compile", [cmake, "--build", str(folder), "--target", *targets, "-j", str(os.cpu_count() or 1)])]
    # never configured, a configure cut short, its ninja gone (with the venv that had it), or made by make (orch before
    # ninja): configured again, compiled again
    if not configured(folder):
        shutil.rmtree(folder, ignore_errors=True)
        steps.insert(0, ("configure", [cmake, "-S", str(llama.root), "-B", str(folder), "-G", "Ninja",
                                       f"-DCMAKE_MAKE_PROGRAM={ninja}", *options(cuda)]))
    for step, cmd in steps:
        run_watched(cmd, watch=None, expected_bytes=None, what=f"{step} {what}", log=log, reporter=reporter, append=True)
    return folder / "bin"


def configured(folder: Path) -> bool:
    """Whether `folder` is a whole ninja configure whose ninja is still there: a compile there only adds what changed."""
    cache = folder / "CMakeCache.txt"
    if not (cache.is_file() and (folder / "build.ninja").is_file()):
        return False
    program = re.search(r"^CMAKE_MAKE_PROGRAM:\w+=(.+)$", cache.read_text(errors="replace"), re.M)
    return program is not None and Path(program.group(1).strip()).is_file()


def build_dir(llama: LlamaCpp, cuda: bool) -> Path:
    return home(llama) / f"build-{key(llama, cuda)}"


def log_for(llama: LlamaCpp, cuda: bool) -> Path:
    return home(llama) / f"build-{key(llama, cuda)}.log"


def lock_for(llama: LlamaCpp, cuda: bool) -> Path:
    return home(llama) / f".build-{key(llama, cuda)}.lock"


def libraries(folder: Path) -> list[Path]:
    """The shared libraries in a compiled folder (libllama.so, libggml*.so, ...)."""
    return sorted(p for p in folder.glob("lib*.so") if p.is_file() and not p.is_symlink())


def copy_libraries(built: Path, into: Path) -> None:
    """The libraries a compile made, beside what loads them (each finds the others through $ORIGIN)."""
    into.mkdir(parents=True, exist_ok=True)
    for library in libraries(built):
        shutil.copy2(library, into / library.name)
