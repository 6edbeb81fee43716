"""What the build benchmarks share: the three pipelines, and running them with their memory sampled."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil


def rss_anon(p: psutil.Process) -> int:
    try:
        for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _who(p: psutil.Process) -> str:
    """A process by what it runs: orch, the converter shim, the quantizer, the recipe."""
    cmd = p.cmdline()
    module = cmd[cmd.index("-m") + 1] if "-m" in cmd else None
    if module:
        return module.rsplit(".", 1)[-1]
    if "-c" in cmd:
        return "recipe"
    return Path(cmd[1]).name if len(cmd) > 1 else p.name()


def measure(steps: list[list[str]], env: dict) -> dict:
    """Run the commands one after another: wall time, peak summed RSS and peak summed RssAnon of each process tree, per step."""
    out = {"seconds": 0.0, "peak_rss": 0, "peak_anon": 0, "steps": []}
    for cmd in steps:
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        root = psutil.Process(proc.pid)
        peak, stop, by_process = {"rss": 0, "anon": 0}, threading.Event(), {}

        def sample():
            while not stop.is_set():
                try:
                    procs = [root, *root.children(recursive=True)]
                    anon = {p.pid: rss_anon(p) for p in procs}
                    peak["rss"] = max(peak["rss"], sum(p.memory_info().rss for p in procs if p.is_running()))
                    peak["anon"] = max(peak["anon"], sum(anon.values()))
                    for p in procs:  # where the anonymous memory sits: the peak of each kind of process
                        who = _who(p)
                        by_process[who] = max(by_process.get(who, 0), anon[p.pid])
                except psutil.Error:
                    pass
                time.sleep(0.05)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        _, err = proc.communicate()
        stop.set()
        thread.join()
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
        seconds = time.monotonic() - t0
        out["steps"].append({"cmd": Path(cmd[1]).name if cmd[1] == "-c" else " ".join(Path(c).name for c in cmd[:4]),
                             "seconds": round(seconds, 1), "peak_rss": peak["rss"], "peak_anon": peak["anon"],
                             "peak_anon_by_process": by_process})
        out["seconds"] += seconds
        out["peak_rss"], out["peak_anon"] = max(out["peak_rss"], peak["rss"]), max(out["peak_anon"], peak["anon"])
    return out


def pipelines(ckpt: Path, work: Path, tree: Path, recipe: str) -> dict[str, list[list[str]]]:
    """(a) orch build, (b) the converter (crash fixed only) and the quantizer, (c) `recipe` (load, normalise, save) then (b)."""
    py = sys.executable
    orch = str(Path(py).with_name("orch"))
    shim = [py, "-m", "orchestrator.builder.llamacpp.shim", "--llama-cpp", str(tree), "--crash-fix-only", "--"]
    quant = [py, "-m", "orchestrator.builder.llamacpp.quantize"]

    def convert_quantize(model: Path, out: Path) -> list[list[str]]:
        return [shim + [str(model), "--outfile", str(out / "f16.gguf"), "--outtype", "f16"],
                quant + [str(out / "f16.gguf"), str(out / "q4_K_M.gguf"), "Q4_K_M"]]

    return {
        "a": [[orch, "build", str(ckpt), "--quant", "q4_K_M", "--no-register", "-o", str(work / "a")]],
        "b": convert_quantize(ckpt, work / "b"),
        "c": [[py, "-c", recipe, str(ckpt), str(work / "c" / "normalised")]] + convert_quantize(work / "c" / "normalised", work / "c"),
    }
