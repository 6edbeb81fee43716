"""orch's one compile of llama.cpp (builder/llamacpp/compile.py): what a machine without the tools is told.

The compile itself runs in scripts/test (runtime.locate, then orch install-ollama); test_quantized.py checks that the
bindings, the programs and the real Ollama load the one library it made.
"""

from __future__ import annotations

import shutil

import pytest

from orchestrator import paths
from orchestrator.builder.llamacpp import tools
from orchestrator.builder.llamacpp.provision import LlamaCpp
from orchestrator.errors import OrchError


@pytest.mark.parametrize("on_path, cuda, named, not_named", [
    ([], False, ["a C++ compiler (apt-get install g++)", "make (apt-get install make)"], ["cmake", "nvcc"]),
    (["g++"], False, ["make (apt-get install make)"], ["compiler", "cmake", "nvcc"]),
    (["g++", "make"], True, ["nvcc"], ["compiler", "make (", "cmake"]),
])
def test_a_compile_without_its_tools_names_each_missing_one_and_makes_nothing(tmp_path, monkeypatch, on_path, cuda, named,
                                                                               not_named):
    """cmake comes with orch (pip's, beside the interpreter); a compiler, make and, for --cuda, nvcc come from the
    system. The first compile (the imatrix programs here) names in one line each one missing, before anything is made."""
    tree = tmp_path / "llama.cpp"
    tree.mkdir()
    (tree / "CMakeLists.txt").write_text("project(llama)\n")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in on_path:
        (bindir / tool).symlink_to(shutil.which(tool))
    monkeypatch.setenv("PATH", str(bindir))

    with pytest.raises(OrchError) as refused:
        tools.locate(LlamaCpp(tree, "test", "a checkout of one's own"), cuda=cuda)
    said = str(refused.value)
    assert said.startswith("compiling llama.cpp needs ") and "\n" not in said, said
    assert all(n in said for n in named) and not any(n in said for n in not_named), said
    assert not (paths.cache_home() / "llama.cpp").exists(), "nothing is made before the tools are there"
