"""benchmarks/RESULTS.md holds one section per benchmark; each script rewrites only its own."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

import psutil

RESULTS = Path(__file__).resolve().with_name("RESULTS.md")


def write_section(name: str, lines: list[str], path: Path = RESULTS, script: str | None = None) -> None:
    begin, end = f"<!-- {name}: written by benchmarks/{script or name + '_benchmark.py'} -->", f"<!-- /{name} -->"
    block = "\n".join([begin, *lines, end])
    text = path.read_text() if path.is_file() else "# Benchmark results\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + block + "\n"
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text)
    os.replace(tmp, path)


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return (f"{os.cpu_count()} CPU cores ({cpu}), {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}")

