"""Ollama against the engine under it, on this CPU: the same GGUF through `ollama serve` and straight from llama-server.

  python benchmarks/ollama_benchmark.py [--hidden 1024] [--rounds 5] [--tokens 64]

Both are the ones orch builds (`orch install-ollama`): Ollama from its Go module, llama-server from the llama.cpp tree
in llama-cpp-python's sdist. The model is Baichuan2-7B-shaped (32 layers, RoPE, vocabulary 125696, random weights)
with narrower layers (--hidden, ffn 2.7 times it; 4096 is the real 7B), so that compute dominates the server's own
overhead as it does at full size (llama.cpp's Baichuan graph takes only 32 or 40 layers); it is built to Q4_K_M by
`orch build`.
Rounds alternate between the two servers; each is asked to continue the same prompt greedily for --tokens tokens, the
first token timed by the client, decode speed from each server's own timings. Then `orch bench` against Ollama with
OLLAMA_NUM_PARALLEL 1 and 4. Writes its section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))

import httpx  # noqa: E402
from results import machine, write_section  # noqa: E402

from orchestrator.builder.tiny import TinyShape, make_tiny_checkpoint  # noqa: E402
from orchestrator.builder import ollama_source as install  # noqa: E402

ORCH = Path(sys.executable).with_name("orch")
PROMPT = "<reserved_106>请介绍一下北京的历史和文化。<reserved_107>"
CTX = 4096  # the Modelfile's num_ctx: both servers get the same context


def num(x) -> str:
    return "–" if x is None else f"{x:.2f}"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_answering(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args[0]} exited {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not answer within {timeout} s")


def stream(url: str, body: dict, first_piece) -> tuple[float, dict]:
    """POST and read the stream: seconds to the first non-empty piece, and the last JSON object."""
    t, ttft, last = time.monotonic(), None, {}
    with httpx.stream("POST", url, json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            line = line.removeprefix("data: ").strip()
            if not line or line == "[DONE]":
                continue
            last = json.loads(line)
            if ttft is None and first_piece(last):
                ttft = time.monotonic() - t
    return ttft or float("nan"), last


def llama_server_round(url: str, tokens: int) -> dict:
    body = {"prompt": PROMPT, "n_predict": tokens, "temperature": 0, "stream": True, "ignore_eos": True}  # prompt cached, as Ollama's
    ttft, last = stream(f"{url}/completion", body, lambda o: o.get("content"))
    t = last["timings"]
    return {"ttft": ttft, "decode_tps": t["predicted_per_second"], "tokens": t["predicted_n"]}


def ollama_round(url: str, model: str, tokens: int) -> dict:
    body = {"model": model, "prompt": PROMPT, "raw": True, "stream": True, "keep_alive": -1,
            "options": {"num_predict": tokens, "temperature": 0, "num_ctx": CTX}}
    ttft, last = stream(f"{url}/api/generate", body, lambda o: o.get("response"))
    return {"ttft": ttft, "decode_tps": last["eval_count"] / (last["eval_duration"] / 1e9), "tokens": last["eval_count"]}


def narrow_7b(work: Path, hidden: int) -> tuple[Path, int]:
    """(its Q4_K_M GGUF, its ffn width): Baichuan2-7B's 32 layers and vocabulary with narrower layers, built by orch (cached in work)."""
    work.mkdir(parents=True, exist_ok=True)
    ckpt, out = work / "checkpoint", work / "build"
    ffn = (hidden * 11008 // 4096 + 255) // 256 * 256
    shape = TinyShape(layers=32, hidden=hidden, heads=hidden // 128, ffn=ffn, vocab=125696)
    if not ckpt.is_dir():
        print(f"generating a 32-layer checkpoint, hidden {hidden}, ffn {ffn}, vocabulary 125696, in {ckpt}", flush=True)
        make_tiny_checkpoint(ckpt, 32, shape=shape, dtype="float16")
    if not out.is_dir():
        subprocess.run([str(ORCH), "build", str(ckpt), "--quant", "q4_K_M", "--no-register", "--no-eval", "-o", str(out)], check=True)
    return next(out.glob("*.Q4_K_M.gguf")), ffn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--work", type=Path, default=None, help="where the checkpoint and build go [default: a temporary directory]")
    args = ap.parse_args()

    built = install.install()  # the Ollama and llama-server orch builds (cached)
    work = args.work or Path(tempfile.mkdtemp(prefix="orch-ollama-bench-"))
    gguf, ffn = narrow_7b(work, args.hidden)
    model = "bench:q4_K_M"
    args_rounds, tokens = args.rounds, args.tokens

    procs = []
    try:
        ls_port, ol_port = free_port(), free_port()
        ls_url, ol_url = f"http://127.0.0.1:{ls_port}", f"http://127.0.0.1:{ol_port}"

        def serve(parallel: int) -> subprocess.Popen:
            env = os.environ | {"OLLAMA_HOST": f"127.0.0.1:{ol_port}", "OLLAMA_MODELS": str(work / "ollama-models"), "HOME": str(work),
                                "OLLAMA_NUM_PARALLEL": str(parallel), "OLLAMA_KEEP_ALIVE": "-1"}
            p = subprocess.Popen([str(built.binary), "serve"], env=env, stdout=subprocess.DEVNULL,
                                 stderr=open(work / f"ollama-{parallel}.log", "wb"))
            procs.append(p)
            wait_answering(f"{ol_url}/api/version", p)
            return p

        ol = serve(1)
        subprocess.run([str(ORCH), "register", str(gguf.with_suffix(".Modelfile")), "--host", ol_url, "--name", model, "--no-check"],
                       check=True)
        ollama_round(ol_url, model, 4)  # loads the model: Ollama's log now names the llama-server command it runs
        # the engine alone, started exactly as Ollama starts it (same flags, same blob), on a port of its own
        line = next(ln for ln in (work / "ollama-1.log").read_text().splitlines() if 'msg="starting llama-server"' in ln)
        engine = shlex.split(line.split('cmd="', 1)[1].rsplit('"', 1)[0])
        engine[engine.index("--port") + 1] = str(ls_port)
        ls = subprocess.Popen(engine, stdout=subprocess.DEVNULL, stderr=open(work / "llama-server.log", "wb"))
        procs.append(ls)
        wait_answering(f"{ls_url}/health", ls)
        llama_server_round(ls_url, 4)
        rows = {"ollama": [], "llama-server": []}
        for i in range(args_rounds):
            order = [("ollama", lambda: ollama_round(ol_url, model, tokens)),
                     ("llama-server", lambda: llama_server_round(ls_url, tokens))]
            for name, run in order if i % 2 == 0 else order[::-1]:
                rows[name].append(run())
                print(name, rows[name][-1], flush=True)
        ls.terminate()
        engine_flags = " ".join(a for a in engine[1:] if not a.startswith("/"))

        benches = {}
        for parallel in (1, 4):
            if parallel != 1:
                ol.terminate()
                ol.wait()
                ol = serve(parallel)
            done = subprocess.run([str(ORCH), "bench", model, "--host", ol_url, "--users", "1,2,4", "--turns", "2", "--max-tokens", "32",
                                   "--ttft-target", "5", "--json"], capture_output=True, text=True, check=True)
            benches[parallel] = json.loads(done.stdout)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait()

    med = {name: {k: statistics.median(r[k] for r in rs) for k in ("ttft", "decode_tps")} for name, rs in rows.items()}
    ratio = med["ollama"]["decode_tps"] / med["llama-server"]["decode_tps"]
    size_gb = gguf.stat().st_size / 1e9
    lines = [
        "## Ollama against llama-server (the engine under it), on CPU",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} by `python benchmarks/ollama_benchmark.py --hidden {args.hidden} --rounds {args.rounds} "
        f"--tokens {args.tokens}`, the two servers side by side in one run, rounds alternating.",
        f"- Machine: {machine()}",
        f"- Ollama {built.version} built by `orch install-ollama` (Go module proxy), its llama-server from llama-cpp-python's "
        "llama.cpp tree, AMX path off; the same llama-server binary measured alone",
        f"- Model: Baichuan2-7B-shaped, 32 layers, hidden {args.hidden}, ffn {ffn}, vocabulary 125696 (random weights), Q4_K_M, "
        f"{size_gb:.2f} GB; {args.tokens} tokens greedily from the same prompt",
        f"- llama-server alone ran with the flags Ollama gave it (from Ollama's log): `{engine_flags}`",
        "",
        "| server | decode tok/s (median) | time to first token (s, median) | runs (tok/s) |",
        "|---|---:|---:|---|",
        *[f"| {name} | {med[name]['decode_tps']:.2f} | {med[name]['ttft']:.3f} | "
          f"{', '.join(format(r['decode_tps'], '.2f') for r in rows[name])} |" for name in rows],
        "",
        "| ratio | measured | target | met |",
        "|---|---:|---:|---|",
        f"| Ollama decode / llama-server decode | {ratio:.3f} | >= 0.95 | {'yes' if ratio >= 0.95 else 'NO'} |",
        f"| Ollama first token / llama-server first token | {med['ollama']['ttft'] / med['llama-server']['ttft']:.2f} |  |  |",
        "",
        "`orch bench` against that Ollama (2 turns a user, 32 tokens a reply):",
        "",
        "| OLLAMA_NUM_PARALLEL | users | ttft p50 (s) | ttft p95 (s) | tok/s per user | tok/s total | errors |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        *[f"| {parallel} | {lv['users']} | {num(lv['ttft_p50'])} | {num(lv['ttft_p95'])} | {num(lv['tokens_per_s_per_user'])} | "
          f"{num(lv['tokens_per_s_total'])} | {lv['errors']} |" for parallel, result in benches.items() for lv in result["levels"]],
        "",
        "### Reading the figures",
        "",
        "- Both servers run the same llama-server binary with the same flags on the same blob, so the ratio is what Ollama's",
        "  Go server adds: rendering the template, relaying each token as a JSON line. On 2 cores it shares them with the",
        "  engine's threads, and rounds vary by about 10 % (the runs column): read the ratio with that spread, and more",
        "  rounds (--rounds) narrow it.",
        "- The first-token times include prompt processing of a 20-token prompt (cached on repeats by both).",
        "- `orch bench`: with one slot (OLLAMA_NUM_PARALLEL=1) users queue, so the first token waits grow with users while",
        "  total throughput stays flat; with 4 slots total throughput grows with users and each user's speed falls, as the",
        "  slots share 2 cores. A '–' is a level where no reply streamed a non-empty piece (a random-weight model can start",
        "  with tokens that print as nothing), so no first-token time could be taken.",
        "- What only a GPU would tell: decode speed when the weights sit in VRAM, where Ollama's per-token overhead is a",
        "  larger share of a much shorter token time, and how many slots a card holds before the KV cache spills.",
    ]
    write_section("ollama", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
