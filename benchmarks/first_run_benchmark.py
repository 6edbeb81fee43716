"""The README's first command (install, then `orch build tiny`), cold and then warm, for two commits side by side in one
run: what one llama.cpp compile saves a new user.

Each commit is cloned fresh and its README's first command run as written, with pip's cache off and empty orch cache and
data directories (cold: everything downloaded and compiled, as on a new machine), then run again in the same clone
(warm). The virtualenv's size is read after. Needs the network to PyPI, and about 12 GB of disk.

    python benchmarks/first_run_benchmark.py c0bbd01 HEAD
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results import machine, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def first_command(readme: str) -> str:
    """The first sh block of the README's set-up section: the command that installs orch and runs orch build tiny."""
    setup = readme[readme.index("## Set up"):]
    return re.search(r"```sh\n(.*?)\n```", setup, re.S).group(1).strip()


def du(path: Path) -> int:
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def measure(ref: str, work: Path) -> dict:
    clone = work / ref.replace("/", "_")
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    subprocess.run(["git", "-C", str(clone), "checkout", "-q", ref], check=True)
    command = first_command((clone / "README.md").read_text())
    home = work / f"{clone.name}-home"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "ORCH_LLAMA_CPP")}
    env |= {"XDG_CACHE_HOME": str(home / "cache"), "XDG_DATA_HOME": str(home / "data"), "PIP_NO_CACHE_DIR": "1",
            "OLLAMA_HOST": "http://127.0.0.1:9",  # no server: the build says so and goes on
            "PATH": os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if "venv" not in p)}
    out = {"ref": subprocess.run(["git", "-C", str(clone), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
           "command": command}
    for run in ("cold", "warm"):
        log = work / f"{clone.name}-{run}.log"
        t = time.monotonic()
        with open(log, "w") as f:
            done = subprocess.run(["bash", "-c", command], cwd=clone, env=env, stdout=f, stderr=subprocess.STDOUT)
        out[run] = time.monotonic() - t
        if done.returncode != 0:
            raise SystemExit(f"{ref}: the README's first command failed ({run}): see {log}")
        print(f"{ref} {run}: {out[run]:.0f} s", flush=True)
    out["venv_bytes"] = du(clone / ".venv")
    out["torch_cuda"] = any((clone / ".venv").glob("lib/python*/site-packages/nvidia*"))
    return out


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before")
    ap.add_argument("after", nargs="?", default="HEAD")
    ap.add_argument("--keep", action="store_true", help="keep the clones and their virtualenvs")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="orch-first-run-"))
    try:
        before, after = measure(args.before, work), measure(args.after, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    lines = [
        "## The README's first command, cold and warm (one llama.cpp compile)",
        "",
        f"Measured {datetime.date.today()} on {machine()}, side by side in one run: each commit cloned fresh, its README's "
        "first command run as written with pip's cache off and empty orch directories (cold), then again (warm).",
        "",
        "| commit | cold | warm | virtualenv |",
        "|---|---:|---:|---:|",
        *(f"| {r['ref']} | {minutes(r['cold'])} | {r['warm']:.0f} s | {r['venv_bytes'] / 1e9:.1f} GB"
          f"{' (CUDA torch)' if r['torch_cuda'] else ''} |" for r in (before, after)),
        "",
        f"Cold, the second takes **{after['cold'] / before['cold']:.2f}×** the first's time (the issue's target: at most 0.60×).",
        "",
        f"`{after['command']}`",
    ]
    write_section("first_run", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
