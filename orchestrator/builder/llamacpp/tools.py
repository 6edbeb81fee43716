"""llama.cpp's imatrix, quantize and server programs, built once from the pinned tree.

llama-cpp-python exposes llama_model_quantize, but its imatrix parameter is a
pointer to a C++ map, out of Python's reach; so for --imatrix and the IQ
types orch compiles `llama-imatrix` and `llama-quantize` from the same
llama.cpp release (CPU only, for this machine) into its cache, once (a few
minutes; cmake and a C++ compiler needed). Without --imatrix none of this runs.
The same compile makes `llama-server`, which an Ollama built from source runs.
They are compiled for this CPU without llama.cpp's AMX path (cpu.py says why).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from orchestrator import paths
from orchestrator.builder.llamacpp import cpu
from orchestrator.builder.llamacpp.process import run_watched
from orchestrator.builder.llamacpp.provision import LlamaCpp
from orchestrator.errors import OrchError
from orchestrator.events import SILENT, Reporter
from orchestrator.files import atomic_path

# llama-server and llama-quantize are also what a source-built Ollama runs (orchestrator.builder.ollama_source): one compile for both
PROGRAMS = ("llama-imatrix", "llama-quantize", "llama-server")
CMAKE_OPTIONS = ["-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=ON",
                 "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_SUBPROCESS=OFF", "-DLLAMA_BUILD_APP=OFF",
                 "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DGGML_NATIVE=ON", "-DBUILD_SHARED_LIBS=OFF", *cpu.cmake_flags()]


@dataclass(frozen=True)
class Tools:
    imatrix: Path
    quantize: Path
    server: Path


def cmake_path() -> str | None:
    beside = Path(sys.executable).with_name("cmake")  # pip install cmake puts it beside the interpreter
    return shutil.which("cmake") or (str(beside) if beside.is_file() else None)


def cmake() -> str:
    found = cmake_path()
    if not found or not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
        raise OrchError("building llama.cpp's tools needs cmake and a C++ compiler: apt-get install cmake g++ "
                        "(or pip install cmake), then run the build again")
    return found


def options(cuda: bool) -> list[str]:
    return [*CMAKE_OPTIONS, *(["-DGGML_CUDA=ON", "-DCMAKE_CUDA_ARCHITECTURES=native"] if cuda else [])]


def home_for(llama: LlamaCpp, *, cuda: bool = False) -> Path:
    """Where the programs for this tree live: beside orch's own provisioned tree (shared by every build that uses it),
    else in orch's cache; one folder per tree and options."""
    key = hashlib.sha256(f"{llama.version}|{llama.root}|{' '.join(options(cuda))}".encode()).hexdigest()[:12]
    provisioned = (llama.root / "orch-provenance.json").is_file()
    return (llama.root.parent if provisioned else paths.cache_home() / "llama.cpp") / f"tools-{key}"


def locate(llama: LlamaCpp, *, cuda: bool = False, reporter: Reporter = SILENT) -> Tools:
    """The programs for this llama.cpp tree, compiled into the cache the first time they are needed (`cuda`: with the CUDA backend)."""
    home = home_for(llama, cuda=cuda)
    tools = Tools(*(home / program for program in PROGRAMS))
    if all((home / program).is_file() for program in PROGRAMS):
        return tools
    if not (llama.root / "CMakeLists.txt").is_file():
        raise OrchError(f"{llama.root} holds only llama.cpp's converter, not its sources: point --llama-cpp at a full llama.cpp "
                        "checkout, or leave it out to use the pinned release")
    home.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=home.parent, prefix=".tools-") as tmp:
        build, log = Path(tmp) / "build", Path(tmp) / "build.log"
        jobs = str(os.cpu_count() or 1)
        reporter.note(f"building llama.cpp's {', '.join(PROGRAMS)}{' with CUDA' if cuda else ''} from {llama.version} "
                      "(once; 10 to 20 minutes on 2 cores)")
        for what, cmd in (("configure", [cmake(), "-S", str(llama.root), "-B", str(build), *options(cuda)]),
                          ("compile", [cmake(), "--build", str(build), "--target", *PROGRAMS, "-j", jobs])):
            run_watched(cmd, watch=None, expected_bytes=None, what=f"{what} llama.cpp tools", log=log, reporter=reporter)
        staged = Path(tmp) / "tools"
        staged.mkdir()
        for program in PROGRAMS:
            built = next((p for p in build.rglob(program) if p.is_file() and os.access(p, os.X_OK)), None)
            if built is None:
                raise OrchError(f"the llama.cpp build made no {program}: see {log}")
            shutil.copy2(built, staged / program)
        shutil.copy2(log, staged / "build.log")
        shutil.rmtree(home, ignore_errors=True)
        os.replace(staged, home)
    return tools


def compute_imatrix(tools: Tools, model: Path, text: Path, tokens: int, final: Path, *, log: Path, reporter: Reporter = SILENT) -> None:
    """An importance matrix of `model` over `text` (`tokens` long in the model's tokens): llama-imatrix, chunks of half of them."""
    ctx = max(32, min(512, tokens // 2))
    with atomic_path(final) as tmp:
        cmd = [str(tools.imatrix), "-m", str(model), "-f", str(text), "-o", str(tmp), "-c", str(ctx), "--no-ppl",
               "-t", str(os.cpu_count() or 1)]
        run_watched(cmd, watch=None, expected_bytes=None, what="importance matrix", log=log, reporter=reporter)
        if not tmp.is_file():
            raise OrchError(f"llama-imatrix wrote no importance matrix: see {log}")


def quantize(tools: Tools, source: Path, final: Path, quant: str, imatrix: Path | None, *, expected_bytes: int, log: Path,
             reporter: Reporter = SILENT) -> None:
    """llama-quantize, with the importance matrix when one is given (the report's comparison without it uses the same binary)."""
    with atomic_path(final) as tmp:
        matrix = ["--imatrix", str(imatrix)] if imatrix else []
        cmd = [str(tools.quantize), *matrix, str(source), str(tmp), quant, str(os.cpu_count() or 1)]
        what = f"quantize to {quant}{' (imatrix)' if imatrix else ''}"
        run_watched(cmd, watch=tmp, expected_bytes=expected_bytes, what=what, log=log, reporter=reporter)
