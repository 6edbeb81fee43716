"""This machine's CPU as llama.cpp meets it, and the compiler flags that keep llama.cpp's AMX path out.

llama.cpp's AMX kernels, compiled by GCC before 13, load an empty tile
configuration (GCC drops the stores that fill it), so the first generated token
dies with SIGILL or SIGSEGV on CPUs with AMX (Sapphire Rapids and later). Every
llama.cpp that orch compiles is built with AMX switched off: the flags override
-march=native, and are ignored by CPUs without AMX. docs/upstream/amx-tile-config.md
has the reproducer and the evidence.
"""

from __future__ import annotations

import platform
from pathlib import Path

AMX_OFF = ("-mno-amx-tile", "-mno-amx-int8", "-mno-amx-bf16")
# the flags that decide which kernels llama.cpp runs on x86
NOTABLE = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


def x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def cmake_flags() -> list[str]:
    """CMake definitions that compile llama.cpp without its AMX path (nothing on other architectures)."""
    if not x86():
        return []
    flags = " ".join(AMX_OFF)
    return [f"-DCMAKE_C_FLAGS={flags}", f"-DCMAKE_CXX_FLAGS={flags}"]


def features(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags as the kernel reports them (empty where /proc/cpuinfo is not there)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")) and ":" in line:
            return set(line.split(":", 1)[1].split())
    return set()


def describe(flags: set[str] | None = None) -> str:
    """One line for an error message: the machine and the CPU features that matter to llama.cpp."""
    flags = features() if flags is None else flags
    has = [f for f in NOTABLE if f in flags]
    return f"{platform.machine()} CPU with {', '.join(has) if has else 'none of ' + ', '.join(NOTABLE)}"


def runtime_has_amx() -> bool:
    """Whether the llama.cpp libraries orch loads were compiled with the AMX path."""
    from orchestrator.builder.llamacpp.runtime import bindings

    return "AMX_INT8 = 1" in bindings().llama_print_system_info().decode(errors="replace")
