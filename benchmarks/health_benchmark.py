"""What one `orch health` probe costs the server, and what the monitor adds on top of the server's own time.

Serves the tiny model from tests/ollama_double.py (llama.cpp generating; a
double of the Ollama API, not Ollama), then, side by side in one run:

  - requests and generated tokens per probe, counted by the server side;
  - the server's own busy time per probe (summed request handling);
  - `orch health` as a user runs it (a fresh process: start, probe, print) and
    the in-process probe() alone; overhead = wall time minus server busy time.

Target: a fresh `orch health` finishes a healthy probe within 1 s plus the server's own time.
Run: python benchmarks/health_benchmark.py   (needs Go for the template renderer, as the tests do)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))

from results import machine, write_section  # noqa: E402
from support import OllamaDouble  # noqa: E402

from orchestrator.ollama import probe as health  # noqa: E402

MODEL = "tiny:q4_K_M"


def prepare(work: Path) -> OllamaDouble:
    orch = str(Path(sys.executable).with_name("orch"))
    build = work / "tiny"
    if not (build / "build.json").is_file():
        subprocess.run([orch, "build", "tiny", "--quant", "q4_K_M", "--no-register", "-o", str(build)], check=True,
                       stdout=subprocess.DEVNULL)
    render = work / "render"
    if not render.is_file():
        go = shutil.which("go") or sys.exit("Go is needed for the template renderer: apt-get install golang-go")
        env = os.environ | {"GOFLAGS": "-mod=mod", "GOCACHE": str(work / "gocache"), "GOPATH": str(work / "gopath")}
        subprocess.run([go, "build", "-o", str(render), "."], cwd=ROOT / "tests" / "gotemplate", check=True, env=env)
    shutil.rmtree(work / "store", ignore_errors=True)
    double = OllamaDouble(work / "store", render).start()
    subprocess.run([orch, "register", str(build), "--host", double.url, "--no-check"], check=True, stdout=subprocess.DEVNULL)
    return double


def measure(double: OllamaDouble, run) -> dict:
    before = double.stats()
    t = time.perf_counter()
    ok = run()
    wall = time.perf_counter() - t
    after = double.stats()
    busy = after["busy_s"] - before["busy_s"]
    return {"ok": ok, "wall_s": wall, "server_s": busy, "overhead_s": wall - busy,
            "requests": len(after["requests"]) - len(before["requests"]),
            "tokens": after["generated_tokens"] - before["generated_tokens"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=HERE / "work" / "health")
    p.add_argument("--repeat", type=int, default=10)
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    double = prepare(args.work)
    orch = str(Path(sys.executable).with_name("orch"))
    spec = health.Probe(double.url, model=MODEL)
    try:
        health.probe(spec)  # load the model once, as a running server would have it
        runs = {"cli": [], "probe": []}
        for _ in range(args.repeat):
            runs["cli"].append(measure(double, lambda: subprocess.run(
                [orch, "health", "--host", double.url, "--model", MODEL, "--json"], capture_output=True).returncode == 0))
            runs["probe"].append(measure(double, lambda: not health.probe(spec).failed))
    finally:
        double.stop()
    assert all(r["ok"] for rs in runs.values() for r in rs), "a probe of the healthy double failed"
    med = {k: {f: statistics.median(r[f] for r in v) for f in ("wall_s", "server_s", "overhead_s", "requests", "tokens")}
           for k, v in runs.items()}
    worst = max(r["overhead_s"] for r in runs["cli"])
    lines = [
        "## Health probe (orch health against the Ollama API double)", "",
        f"Measured {time.strftime('%Y-%m-%d')} by `python benchmarks/health_benchmark.py`, {args.repeat} probes each, interleaved.",
        f"- Machine: {machine()}",
        "- Server: tests/ollama_double.py serving the tiny model with llama.cpp (a double of the Ollama API, not Ollama).", "",
        "| per probe (median) | requests | tokens generated | wall (s) | server busy (s) | monitor overhead (s) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    labels = {"cli": "`orch health` (fresh process)", "probe": "orchestrator.ollama.probe.probe() in a running process (watch mode)"}
    for k, m in med.items():
        lines.append(f"| {labels[k]} | {m['requests']:.0f} | {m['tokens']:.0f} | {m['wall_s']:.3f} | {m['server_s']:.3f} | "
                     f"{m['overhead_s']:.3f} |")
    lines += ["", f"Target: overhead of a fresh `orch health` under 1 s. Worst of {args.repeat}: {worst:.3f} s "
              f"({'met' if worst < 1 else 'NOT met'}).", ""]
    write_section("health", lines)
    print(json.dumps(med, indent=2))


if __name__ == "__main__":
    main()
