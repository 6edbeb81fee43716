"""llama-cpp-python's bindings over orch's own compile of the pinned llama.cpp: what quantize, verify and the quality
report load.

The bindings are the pinned release's own Python files (ctypes), kept from the
same sdist whose tree orch compiles (provision.py), so they always match the
libraries they load. Nothing goes into the virtualenv and pip compiles nothing:
`bindings()` puts the folder on sys.path. A --llama-cpp tree of one's own gives
the converter only; the libraries always come from the pinned release.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from orchestrator.builder.llamacpp import compile, provision
from orchestrator.builder.llamacpp.provision import LlamaCpp
from orchestrator.events import SILENT, Reporter

PACKAGE = "llama_cpp"
LIBRARY = f"{PACKAGE}/lib/libllama.so"  # where the bindings look for it
TARGETS = ("llama",)  # libllama and the ggml libraries it links: what the bindings load


def pinned(reporter: Reporter = SILENT) -> LlamaCpp:
    """orch's pinned llama.cpp tree, the one with the bindings (the --llama-cpp tree when that is it)."""
    llama = provision.locate(reporter=reporter)
    return llama if (llama.bindings / PACKAGE).is_dir() else provision.provision(reporter=reporter)


def home_for(llama: LlamaCpp) -> Path:
    return compile.home(llama) / f"runtime-{compile.key(llama, False)}"


def complete(home: Path) -> bool:
    return (home / LIBRARY).is_file()


def locate(reporter: Reporter = SILENT) -> Path:
    """The folder to import `llama_cpp` from, its libraries compiled the first time (about 2 minutes on 2 cores)."""
    llama = pinned(reporter)

    def fill(built: Path, staged: Path) -> None:
        shutil.copytree(llama.bindings / PACKAGE, staged / PACKAGE)
        compile.copy_libraries(built, staged / PACKAGE / "lib")

    return compile.into(home_for(llama), (LIBRARY,), llama, TARGETS, fill, what="llama.cpp's libraries",
                        note=f"compiling llama.cpp's libraries from {llama.version} (once; about 2 minutes on 2 cores)",
                        reporter=reporter)


def bindings(reporter: Reporter = SILENT):
    """The `llama_cpp` module, importable from orch's compile."""
    home = str(locate(reporter))
    if home not in sys.path:
        sys.path.insert(0, home)
    import llama_cpp

    return llama_cpp
