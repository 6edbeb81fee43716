"""llama.cpp's imatrix, quantize and server programs, from orch's one compile of the tree (compile.py).

llama-cpp-python exposes llama_model_quantize, but its imatrix parameter is a
pointer to a C++ map, out of Python's reach; so for --imatrix and the IQ
types orch runs `llama-imatrix` and `llama-quantize` from the same llama.cpp
release. They are compiled the first time they are needed, in the build
directory that already holds the bindings' libraries, so only what the programs
add is compiled (a few minutes on 2 cores). The same compile makes
`llama-server`, which an Ollama built from source runs. Each program's folder
holds the shared libraries it loads, so the folder can be copied whole.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from orchestrator.builder.llamacpp import compile
from orchestrator.builder.llamacpp.process import run_watched
from orchestrator.builder.llamacpp.provision import LlamaCpp
from orchestrator.errors import OrchError
from orchestrator.events import SILENT, Reporter
from orchestrator.files import atomic_path

# llama-server and llama-quantize are also what a source-built Ollama runs (orchestrator.builder.ollama_source)
PROGRAMS = ("llama-imatrix", "llama-quantize", "llama-server")


@dataclass(frozen=True)
class Tools:
    imatrix: Path
    quantize: Path
    server: Path

    @property
    def libraries(self) -> list[Path]:
        """The shared libraries the programs load, beside them."""
        return compile.libraries(self.server.parent)


def home_for(llama: LlamaCpp, *, cuda: bool = False) -> Path:
    """Where the programs for this tree and options live (one folder each)."""
    return compile.home(llama) / f"tools-{compile.key(llama, cuda)}"


def locate(llama: LlamaCpp, *, cuda: bool = False, reporter: Reporter = SILENT) -> Tools:
    """The programs for this llama.cpp tree, compiled the first time they are needed (`cuda`: with the CUDA backend)."""
    def fill(built: Path, staged: Path) -> None:
        for program in PROGRAMS:
            if (built / program).is_file():
                shutil.copy2(built / program, staged / program)
        compile.copy_libraries(built, staged)

    reused = "reusing what the libraries' compile made" if compile.build_dir(llama, cuda).is_dir() else "a few minutes"
    home = compile.into(home_for(llama, cuda=cuda), PROGRAMS, llama, PROGRAMS, fill, cuda=cuda, what="llama.cpp's programs",
                        note=f"compiling llama.cpp's {', '.join(PROGRAMS)}{' with CUDA' if cuda else ''} from {llama.version} "
                             f"(once; {reused})", reporter=reporter)
    return Tools(*(home / program for program in PROGRAMS))


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
