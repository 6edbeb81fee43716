"""llama.cpp's quantizer (`llama_model_quantize` from llama-cpp-python's bindings, runtime.py), in a child process.

Run as `python -m orchestrator.builder.llamacpp.quantize INPUT OUTPUT TYPE`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from orchestrator.builder.llamacpp.process import run_watched
from orchestrator.events import SILENT, Reporter
from orchestrator.files import atomic_path


def quantize(source: Path, final: Path, quant: str, *, expected_bytes: int, log: Path, reporter: Reporter = SILENT) -> None:
    with atomic_path(final) as tmp:
        cmd = [sys.executable, "-m", __name__, str(source), str(tmp), quant]
        run_watched(cmd, watch=tmp, expected_bytes=expected_bytes, what=f"quantize to {quant}", log=log, reporter=reporter)


def _ftype(llama_cpp, quant: str) -> int:
    return llama_cpp.LLAMA_FTYPE_ALL_F32 if quant == "F32" else getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant}")


def main(argv: list[str]) -> int:
    import ctypes

    from orchestrator.builder.llamacpp.runtime import bindings

    llama_cpp = bindings()
    source, out, quant = argv
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = _ftype(llama_cpp, quant)
    params.nthread = os.cpu_count() or 1
    return llama_cpp.llama_model_quantize(source.encode(), out.encode(), ctypes.byref(params))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
