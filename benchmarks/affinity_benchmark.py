"""What keeping a conversation on its replica saves: `orch bench --route conversation` against `--route turn`.

  python benchmarks/affinity_benchmark.py [--hidden 1024] [--rounds 2] [--turns 6]

Two real Ollama servers (the ones `orch install-ollama` builds) on loopback, each with one slot, serve the same model:
Baichuan2-7B's 32 layers and vocabulary with narrower layers (benchmarks/ollama_benchmark.py), so that reading a prompt
costs what it does at size relative to decoding. Two users each hold a multi-turn conversation. With `conversation`
each user's turns go to one server, whose slot still holds the conversation so far (llama-server's prompt cache): only
the new turn is read. With `turn` each turn goes to the other server, as a balancer that ignores conversations does, and
the whole history is read again. Rounds alternate between the two routes on the same servers. Writes its section of
RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from ollama_benchmark import ORCH, free_port, narrow_7b, wait_answering  # noqa: E402
from results import machine, write_section  # noqa: E402

from orchestrator.builder import ollama_source as install  # noqa: E402

ROUTES = ("conversation", "turn")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--turns", type=int, default=6)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--work", type=Path, default=None, help="where the checkpoint and build go [default: a temporary directory]")
    args = ap.parse_args()

    built = install.install()
    work = args.work or Path(tempfile.mkdtemp(prefix="orch-affinity-bench-"))
    gguf, _ = narrow_7b(work, args.hidden)
    model = "bench:q4_K_M"
    procs, urls = [], []
    runs: dict[str, list[dict]] = {r: [] for r in ROUTES}
    try:
        for i in range(2):
            port = free_port()
            env = os.environ | {"OLLAMA_HOST": f"127.0.0.1:{port}", "OLLAMA_MODELS": str(work / f"models-{i}"), "HOME": str(work),
                                "OLLAMA_NUM_PARALLEL": "1", "OLLAMA_KEEP_ALIVE": "-1"}
            procs.append(subprocess.Popen([str(built.binary), "serve"], env=env, stdout=subprocess.DEVNULL,
                                          stderr=open(work / f"ollama-{i}.log", "wb")))
            urls.append(f"http://127.0.0.1:{port}")
            wait_answering(f"{urls[-1]}/api/version", procs[-1])
            subprocess.run([str(ORCH), "register", str(gguf.with_suffix(".Modelfile")), "--host", urls[-1], "--name", model,
                            "--no-check"], check=True, stdout=subprocess.DEVNULL)
        for i in range(args.rounds):
            for route in ROUTES if i % 2 == 0 else ROUTES[::-1]:
                hosts = [a for u in urls for a in ("--host", u)]
                done = subprocess.run([str(ORCH), "bench", model, *hosts, "--route", route, "--users", "2", "--turns", str(args.turns),
                                       "--max-tokens", str(args.tokens), "--ttft-target", "30", "--json"],
                                      capture_output=True, text=True, check=True)
                level = json.loads(done.stdout)["levels"][0]
                runs[route].append(level)
                print(route, {k: level[k] for k in ("ttft_p50", "ttft_p95", "tokens_per_s_total")}, flush=True)
    finally:
        for p in procs:
            p.terminate()
            p.wait()

    med = {r: {k: statistics.median(lv[k] for lv in runs[r]) for k in ("ttft_p50", "ttft_p95", "tokens_per_s_total")} for r in ROUTES}
    write_section("affinity", [
        "## Conversations kept on their replica (orch bench --route)",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} by `python benchmarks/affinity_benchmark.py --hidden {args.hidden} --rounds "
        f"{args.rounds} --turns {args.turns} --tokens {args.tokens}`: both routes side by side in one run, rounds alternating.",
        f"- Machine: {machine()}",
        f"- Two real Ollama {built.version} servers on loopback, one slot each (OLLAMA_NUM_PARALLEL=1), the same Q4_K_M model: "
        f"Baichuan2-7B-shaped, 32 layers, hidden {args.hidden}, vocabulary 125696, random weights, {gguf.stat().st_size / 1e9:.2f} GB",
        f"- 2 users, {args.turns} turns each, up to {args.tokens} tokens a reply; the history grows with every turn",
        "",
        "| route | ttft p50 (s) | ttft p95 (s) | tok/s total | runs (ttft p50) |",
        "|---|---:|---:|---:|---|",
        *[f"| {r} | {med[r]['ttft_p50']:.3f} | {med[r]['ttft_p95']:.3f} | {med[r]['tokens_per_s_total']:.2f} | "
          f"{', '.join(format(lv['ttft_p50'], '.3f') for lv in runs[r])} |" for r in ROUTES],
        "",
        "| ratio | measured |",
        "|---|---:|",
        f"| ttft p50, each turn to the next replica / conversation kept on its replica | "
        f"{med['turn']['ttft_p50'] / med['conversation']['ttft_p50']:.2f} |",
        f"| ttft p95, the same | {med['turn']['ttft_p95'] / med['conversation']['ttft_p95']:.2f} |",
    ])


if __name__ == "__main__":
    main()
