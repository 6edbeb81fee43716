"""The machine a bundle is made on, and what the box it goes to must have for the bundle's compiled parts to run there.

A bundle carries wheels resolved for one Python (X.Y) and one platform, and
programs compiled on the machine that made it: llama.cpp (the libraries the
bindings load, llama-server, the quantizer) is compiled for that machine's CPU (GGML_NATIVE),
and against its glibc. So the manifest records the Python, the architecture,
the glibc and the CPU's vector extensions, and the box is checked against each
before anything is installed: one line per thing it lacks. Standard library
only: this runs on the box before orch is installed.
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

# the x86 extensions a compiler told -march=native may use in llama.cpp's kernels (AMX is always compiled out: cpu.py)
VECTOR_FLAGS = ("sse4_1", "sse4_2", "ssse3", "popcnt", "avx", "avx2", "fma", "f16c", "bmi2", "avx_vnni", "avx512f", "avx512bw",
                "avx512cd", "avx512dq", "avx512vl", "avx512vbmi", "avx512_vnni", "avx512_bf16", "avx512_fp16")


@dataclass(frozen=True)
class Box:
    python: str  # "3.11"
    machine: str  # "x86_64"
    glibc: str | None  # "2.36"; None where the C library is not glibc
    cpu: tuple[str, ...]  # the VECTOR_FLAGS this CPU has

    def as_dict(self) -> dict:
        return {"python": self.python, "machine": self.machine, "glibc": self.glibc, "cpu": list(self.cpu)}

    @classmethod
    def from_dict(cls, raw: dict) -> "Box":
        return cls(str(raw["python"]), str(raw["machine"]), raw.get("glibc"), tuple(raw.get("cpu", ())))


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, ...]:
    try:
        text = cpuinfo.read_text()
    except OSError:
        return ()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")) and ":" in line:
            have = set(line.split(":", 1)[1].split())
            return tuple(f for f in VECTOR_FLAGS if f in have)
    return ()


def glibc() -> str | None:
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
    except (ValueError, OSError, AttributeError):
        return None
    return version if name == "glibc" else None


def this_box() -> Box:
    return Box(f"{sys.version_info.major}.{sys.version_info.minor}", platform.machine().lower(), glibc(), cpu_flags())


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".") if p.isdigit())


def problems(made_for: Box, box: Box, *, python_exe: str = "python3") -> list[str]:
    """Why the bundle's parts would not run on `box`, one line each with what to do; empty when they would."""
    found = []
    if box.python != made_for.python:
        found.append(f"this bundle holds wheels for Python {made_for.python}, and {python_exe} here is {box.python}: run the "
                     f"installer with python{made_for.python}, or make the bundle on a machine with Python {box.python}")
    if box.machine != made_for.machine:
        found.append(f"this bundle was made for {made_for.machine}, and this box is {box.machine}: make it on a machine of this kind")
    if made_for.glibc and (box.glibc is None or _version(box.glibc) < _version(made_for.glibc)):
        found.append(f"this bundle's programs need glibc {made_for.glibc} or newer, and this box has "
                     f"{'glibc ' + box.glibc if box.glibc else 'another C library'}: make it on a machine with an older glibc")
    if box.machine == made_for.machine and (missing := [f for f in made_for.cpu if f not in box.cpu]):
        found.append(f"this bundle's llama.cpp was compiled for a CPU with {', '.join(missing)}, which this box's CPU lacks: "
                     "make the bundle on a machine with this box's CPU (or an older one of its family)")
    return found

