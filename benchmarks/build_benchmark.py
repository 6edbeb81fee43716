"""Benchmark `orch build` against the two ways a user could otherwise make a Baichuan2 GGUF.

Builds a scaled synthetic Baichuan2 checkpoint (32 layers, about 1 GB, one .bin
as Baichuan2 ships), then measures wall time and peak memory (the summed RSS of
the whole process tree, sampled every 50 ms, and its anonymous part) of, side by side in one run:

  (a) orch build DIR --quant q4_K_M --no-register
  (b) llama.cpp's converter with only its crash fixed, then its quantizer: no NormHead (a wrong model, the floor)
  (c) the Baichuan2 README recipe: load the whole checkpoint, normalise lm_head, save it, then (b)'s convert and quantize

and writes its section of benchmarks/RESULTS.md. Run: python benchmarks/build_benchmark.py
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path


from harness import measure, pipelines
from orchestrator.builder.llamacpp import provision as llamacpp
from results import machine, write_section
from orchestrator.builder.tiny import TinyShape, make_tiny_checkpoint

HERE = Path(__file__).resolve().parent

RECIPE = """
import shutil, sys, torch
from pathlib import Path
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
dst.mkdir(parents=True, exist_ok=True)
state = torch.load(src / "pytorch_model.bin", map_location="cpu", weights_only=True)
head = state["lm_head.weight"]
state["lm_head.weight"] = torch.nn.functional.normalize(head.float(), dim=-1).to(head.dtype)
torch.save(state, dst / "pytorch_model.bin")
for f in src.iterdir():
    if f.name != "pytorch_model.bin":
        shutil.copy(f, dst / f.name)
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=HERE / "work")
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--ffn", type=int, default=3072)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--repeat", type=int, default=3, help="runs of each pipeline, interleaved; the median is reported")
    p.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    args = p.parse_args()

    shape = TinyShape(layers=32, hidden=args.hidden, heads=args.hidden // 128, ffn=args.ffn, vocab=args.vocab)
    ckpt = args.work / f"baichuan2-synthetic-{args.hidden}h"
    if not (ckpt / "config.json").is_file():
        args.work.mkdir(parents=True, exist_ok=True)
        print(f"making a synthetic checkpoint {shape} …", flush=True)
        make_tiny_checkpoint(ckpt, 32, fmt="bin", shape=shape)
    size = sum(f.stat().st_size for f in ckpt.glob("*.bin"))
    tree = llamacpp.locate(None).root
    env = os.environ | {"XDG_CACHE_HOME": str(args.work / "cache"), "XDG_DATA_HOME": str(args.work / "data"),
                        llamacpp.ENV_OVERRIDE: str(tree)}

    runs: dict[str, list[dict]] = {"a": [], "b": [], "c": []}
    for i in range(args.repeat):
        order = list(pipelines(ckpt, args.work / "runs", tree, RECIPE).items())
        order = order[i % 3:] + order[:i % 3]  # rotate, so no pipeline always runs first on a cold cache
        for name, steps in order:
            shutil.rmtree(args.work / "runs" / name, ignore_errors=True)
            (args.work / "runs" / name).mkdir(parents=True)
            r = measure(steps, env)
            record = args.work / "runs" / name / "build.json"
            if record.is_file():  # orch's own account: what its quality report took
                r["quality"] = json.loads(record.read_text())["timings"].get("quality", 0.0)
            runs[name].append(r)
            print(f"run {i + 1} ({name}): {r['seconds']:.1f} s, peak RSS {r['peak_rss'] / 2**20:.0f} MiB", flush=True)

    med = {k: {"seconds": statistics.median(r["seconds"] for r in v), "peak_rss": max(r["peak_rss"] for r in v),
               "peak_anon": max(r["peak_anon"] for r in v)} for k, v in runs.items()}
    without = statistics.median(r["seconds"] - r["quality"] for r in runs["a"])
    ratios = {"time a/b": med["a"]["seconds"] / med["b"]["seconds"], "time a/c": med["a"]["seconds"] / med["c"]["seconds"],
              "time a/b without the quality report": without / med["b"]["seconds"],
              "peak RSS a / checkpoint size": med["a"]["peak_rss"] / size,
              "peak anonymous a / checkpoint size": med["a"]["peak_anon"] / size}
    targets = {"time a/b": 1.1, "time a/c": 0.7, "peak RSS a / checkpoint size": 0.5}
    write_results(args.results, shape, size, med, runs, ratios, targets)
    print(json.dumps({"median": med, "ratios": ratios}, indent=2))


def write_results(path: Path, shape, size: int, med: dict, runs: dict, ratios: dict, targets: dict) -> None:
    labels = {"a": "(a) orch build --quant q4_K_M --no-register",
              "b": "(b) converter, crash fixed only (no NormHead), + quantizer",
              "c": "(c) README recipe: load all, normalise, save, convert, quantize"}
    lines = [
        "## Build (orch build against the converter alone and the README recipe)", "",
        f"Measured {time.strftime('%Y-%m-%d')} by `python benchmarks/build_benchmark.py`, all pipelines side by side in one run,",
        f"each run {len(runs['a'])} times interleaved in rotating order (median time, highest peak).", "",
        f"- Machine: {machine()}",
        f"- llama.cpp: {llamacpp.locate(None).version}",
        f"- Checkpoint: synthetic Baichuan2, 32 layers, hidden {shape.hidden}, ffn {shape.ffn}, vocab {shape.vocab}, "
        f"bf16, one pytorch_model.bin of {size / 1e9:.2f} GB",
        "- Peak memory: the summed RSS of each pipeline's process tree, sampled every 50 ms (file-backed pages of",
        "  memory-mapped weights count), and its anonymous part (RssAnon: what a machine must really have).", "",
        "| pipeline | wall time (s) | peak RSS (MiB) | peak anonymous (MiB) | runs (s) |", "|---|---:|---:|---:|---|",
    ]
    for k in "abc":
        lines.append(f"| {labels[k]} | {med[k]['seconds']:.1f} | {med[k]['peak_rss'] / 2**20:.0f} | {med[k]['peak_anon'] / 2**20:.0f} | "
                     f"{', '.join(format(r['seconds'], '.1f') for r in runs[k])} |")
    lines += ["", "| ratio | measured | target | met |", "|---|---:|---:|---|"]
    for k, v in ratios.items():
        met = ("yes" if v <= targets[k] else "NO") if k in targets else ""
        lines.append(f"| {k} | {v:.2f} | {f'<= {targets[k]}' if k in targets else ''} | {met} |")
    quality = statistics.median(r["quality"] for r in runs["a"])
    recipe = med["c"]["seconds"] - med["b"]["seconds"]
    lines += ["", "(a) also hashes every source file (on a second core, beside the conversion), verifies the GGUF with",
              f"llama.cpp (markers, a few generated tokens), measures the quality report ({quality:.1f} s of its median run) and",
              "writes the Modelfile and build.json; (b) makes a model that",
              "answers wrong (no NormHead), so it is the floor, not an alternative.", "",
              "### Reading the figures", "",
              f"- (c) is (b) plus the recipe's load-normalise-save, which cost {recipe:.1f} s here (1 GB, warm page cache, fast",
              "  disk). a/c <= 0.7 needs (a) to beat (b) itself unless the recipe costs more than 40 % of (b); on this machine",
              "  and scale it cannot, since both share llama.cpp's converter and quantizer (the quantizer alone is about two",
              "  thirds of every pipeline). The recipe's cost grows with the checkpoint (a 7B rewrite is 15 GB read and written).",
              "- a/b: on 2 cores the extra is mostly CPU that (b) skips: the quality report (`--no-eval` skips it), sha256 of",
              "  the 1 GB of sources for build.json (about 1 s of one core, run beside the converter), NormHead, the page",
              "  hand-back, verification (about 0.6 s).",
              "  The same pipelines vary by 2-3 s between runs on this shared machine (see the runs column).",
              "- Peak RSS of (a) is the quality report's: it maps the F16 and the quantized GGUF (file pages the kernel can",
              "  drop) to compare their logits. Without the report (`--no-eval`) the peak is the converter child's: Python with",
              "  torch imported (about 300 MiB before the first tensor, a floor (b) pays too) plus a block of rows in flight;",
              "  orch hands back the checkpoint's memory-mapped pages as the output grows, which (b) and (c) do not. Peak",
              "  anonymous memory is the measure that decides whether a build fits a machine; see the full-size sections,",
              "  where it is 0.17 (7B) and 0.11 (13B) of the checkpoint.", ""]
    write_section("build", lines, path)


if __name__ == "__main__":
    main()
