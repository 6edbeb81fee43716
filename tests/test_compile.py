"""orch's one compile of llama.cpp (builder/llamacpp/compile.py): what a machine without the tools is told.

The compile itself runs in scripts/test (runtime.locate, then orch install-ollama); test_quantized.py checks that the
bindings, the programs and the real Ollama load the one library it made.
"""

from __future__ import annotations

import shutil
import sys

import pytest

from orchestrator import paths
from orchestrator.builder.llamacpp import tools
from orchestrator.builder.llamacpp.provision import LlamaCpp
from orchestrator.errors import OrchError


@pytest.mark.parametrize("on_path, beside_python, cuda, named, not_named", [
    ([], ["cmake", "ninja"], False, ["a C++ compiler (apt-get install g++)"], ["cmake", "ninja", "nvcc"]),
    (["g++"], [], False, ["cmake (pip install cmake", "ninja (pip install ninja"], ["compiler", "nvcc"]),
    (["g++"], ["cmake", "ninja"], True, ["nvcc"], ["compiler", "cmake", "ninja ("]),
])
def test_a_compile_without_its_tools_names_each_missing_one_and_makes_nothing(tmp_path, monkeypatch, on_path, beside_python,
                                                                               cuda, named, not_named):
    """cmake and ninja come with orch (pip's, beside the interpreter), so a C++ compiler is all a machine must bring, and
    nvcc for --cuda. The first compile (the imatrix programs here) names in one line each one missing, before anything
    is made."""
    tree = tmp_path / "llama.cpp"
    tree.mkdir()
    (tree / "CMakeLists.txt").write_text("project(llama)\n")
    bindir, venv = tmp_path / "bin", tmp_path / "venv" / "bin"
    bindir.mkdir()
    venv.mkdir(parents=True)
    for tool in on_path:
        (bindir / tool).symlink_to(shutil.which(tool))
    for tool in beside_python:
        (venv / tool).write_text("#!/bin/sh\n")
    monkeypatch.setenv("PATH", str(bindir))
    monkeypatch.setattr(sys, "executable", str(venv / "python"))

    with pytest.raises(OrchError) as refused:
        tools.locate(LlamaCpp(tree, "test", "a checkout of one's own"), cuda=cuda)
    said = str(refused.value)
    assert said.startswith("compiling llama.cpp needs ") and "\n" not in said, said
    assert all(n in said for n in named) and not any(n in said for n in not_named), said
    assert not (paths.cache_home() / "llama.cpp").exists(), "nothing is made before the tools are there"


@pytest.mark.parametrize("files, ninja_there, configured", [
    ({}, True, False),  # never configured
    ({"CMakeCache.txt": "CMAKE_MAKE_PROGRAM:FILEPATH={ninja}\n"}, True, False),  # a configure cut short
    ({"CMakeCache.txt": "CMAKE_MAKE_PROGRAM:FILEPATH=/usr/bin/gmake\n", "Makefile": ""}, True, False),  # orch before ninja
    ({"CMakeCache.txt": "CMAKE_MAKE_PROGRAM:FILEPATH={ninja}\n", "build.ninja": ""}, False, False),  # its ninja went with a venv
    ({"CMakeCache.txt": "CMAKE_MAKE_PROGRAM:FILEPATH={ninja}\n", "build.ninja": ""}, True, True),
])
def test_a_build_directory_is_compiled_in_only_when_its_configure_is_whole_and_its_ninja_there(tmp_path, files, ninja_there,
                                                                                                 configured):
    """What is not is configured again from nothing, rather than failing half-way or mixing two configures."""
    from orchestrator.builder.llamacpp import compile

    ninja = tmp_path / "venv" / "bin" / "ninja"
    if ninja_there:
        ninja.parent.mkdir(parents=True)
        ninja.write_text("#!/bin/sh\n")
    folder = tmp_path / "build"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text.format(ninja=ninja))
    assert compile.configured(folder) is configured
