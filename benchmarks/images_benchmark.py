"""What the docker path costs on this machine: `orch images build` cold and warm, the images' sizes, and `orch up
--runtime docker` to a healthy stack on them, side by side in one run.

Needs a Docker engine (DOCKER_HOST, or the one tests/engines.py starts when --start-engine is given) and a tiny
build (`orch build tiny`, which this runs first). Cold means no orch.local image and an empty build cache.

    python benchmarks/images_benchmark.py --start-engine
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from results import machine, write_section  # noqa: E402

ORCH = Path(sys.executable).with_name("orch")


def run(*args: str, env: dict, timeout: float = 3600) -> tuple[float, subprocess.CompletedProcess]:
    t = time.monotonic()
    proc = subprocess.run([str(ORCH), *args], capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"orch {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return time.monotonic() - t, proc


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start-engine", action="store_true", help="start (and stop) dockerd as the test suite does")
    args = parser.parse_args()
    engine = {}
    if args.start_engine:
        import engines

        engine = engines.start()
    env = os.environ | engine | {"ORCH_WEBUI_PREINSTALL": os.environ.get("ORCH_WEBUI_PREINSTALL", "torch==2.13.0")}
    try:
        from orchestrator.ship import images

        docker = shutil.which("docker")
        for tag in [*images.tags().values(), images.BASE]:
            subprocess.run([docker, "rmi", "-f", tag], capture_output=True, env=env)
        subprocess.run([docker, "builder", "prune", "-af"], capture_output=True, env=env)
        cold, proc = run("images", "build", "--json", env=env)
        sizes = json.loads(proc.stdout)["sizes"]
        warm, _ = run("images", "build", "--json", env=env)
        run("build", "tiny", env=env)
        with tempfile.TemporaryDirectory() as tmp:
            stack = ["--dir", str(Path(tmp) / "stack")]
            first, _ = run("up", "--runtime", "docker", "--offline", "--bind", "127.0.0.1", "--port", str(free_port()),
                           "--ollama-port", str(free_port()), *stack, env=env)
            again, _ = run("up", *stack, env=env)
            run("down", "--volumes", *stack, env=env)
    finally:
        if args.start_engine:
            engines.stop()
    write_section("images", [
        "## The docker path: orch images build and orch up on its images",
        "",
        f"Measured {datetime.date.today()} by `python benchmarks/images_benchmark.py --start-engine`, in one run, in this order.",
        "",
        f"- Machine: {machine()}; Debian's dockerd 20.10.24, compose v2.40.3 (built from its Go module), the legacy builder",
        "- Cold: no orch.local image and an empty build cache (the Ollama build itself is orch install-ollama's, reused)",
        "",
        "| step | seconds |",
        "|---|---:|",
        f"| orch images build, cold (debootstrap base, Ollama image, Open WebUI pip install) | {cold:.1f} |",
        f"| orch images build, warm (Docker's layer cache) | {warm:.1f} |",
        f"| orch up --runtime docker, first start to healthy (tiny build registered, chat models checked) | {first:.1f} |",
        f"| orch up again, nothing to change | {again:.1f} |",
        "",
        "| ratio | measured |",
        "|---|---:|",
        f"| images build warm / cold | {warm / cold:.3f} |",
        f"| second up / first up | {again / first:.2f} |",
        "",
        "| image | size (GB) |",
        "|---|---:|",
        *(f"| {images.tags()[s]} | {sizes[s] / 1e9:.2f} |" for s in sizes),
        "",
        "The official images' sizes could not be read from this machine (Docker Hub and ghcr.io are out of its reach).",
        "Open WebUI's size is mostly torch and its CUDA wheels, which pip takes from PyPI for torch 2.13.0 (issue 30's",
        "CPU install would shrink it).",
    ])


if __name__ == "__main__":
    main()
