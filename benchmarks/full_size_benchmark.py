"""Benchmark `orch build` at Baichuan2's real size: a random checkpoint with 7B's (or 13B's) dimensions, bf16.

Slow (tens of minutes, tens of GB of disk): run it by hand, not in CI.

  python benchmarks/full_size_benchmark.py generate --size 7b      # ~15 GB of pytorch_model-*.bin shards, written tensor by tensor
  python benchmarks/full_size_benchmark.py run --size 7b           # the pipelines below, one after another; writes RESULTS.md

Pipelines, each measured for wall time, peak RSS and peak anonymous memory (RssAnon from /proc, summed over
the process tree, sampled every 50 ms): RSS counts file pages of memory-mapped weights that the kernel can drop
at any time; anonymous memory is what decides whether a build fits a small machine.

  (a) orch build DIR --quant q4_K_M --no-register
  (b) llama.cpp's converter (crash fixed only, no NormHead: a wrong model, the floor) and its quantizer
  (c) the Baichuan2 README recipe (load everything, normalise lm_head, save), then (b)'s convert and quantize
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import psutil  # noqa: E402
from harness import measure, pipelines  # noqa: E402
from results import machine, write_section  # noqa: E402

from orchestrator.builder.llamacpp import provision  # noqa: E402


@dataclass(frozen=True)
class Size:
    layers: int
    hidden: int
    heads: int
    ffn: int
    vocab: int = 125696


SIZES = {"7b": Size(32, 4096, 32, 11008), "13b": Size(40, 5120, 40, 13696)}
SHARD_BYTES = 2 << 30

RECIPE = """
import json, shutil, sys, torch
from pathlib import Path
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
dst.mkdir(parents=True, exist_ok=True)
state = {}
for shard in sorted(src.glob("pytorch_model*.bin")):
    state.update(torch.load(shard, map_location="cpu", weights_only=True))
head = state["lm_head.weight"]
state["lm_head.weight"] = torch.nn.functional.normalize(head.float(), dim=-1).to(head.dtype)
torch.save(state, dst / "pytorch_model.bin")
for f in src.iterdir():
    if not f.name.startswith("pytorch_model"):
        shutil.copy(f, dst / f.name)
"""


def tensors(size: Size):
    """(name, shape) in checkpoint order."""
    h, f, v = size.hidden, size.ffn, size.vocab
    yield "model.embed_tokens.weight", (v, h)
    for i in range(size.layers):
        p = f"model.layers.{i}."
        yield p + "self_attn.W_pack.weight", (3 * h, h)
        yield p + "self_attn.o_proj.weight", (h, h)
        yield p + "mlp.gate_proj.weight", (f, h)
        yield p + "mlp.up_proj.weight", (f, h)
        yield p + "mlp.down_proj.weight", (h, f)
        yield p + "input_layernorm.weight", (h,)
        yield p + "post_attention_layernorm.weight", (h,)
    yield "model.norm.weight", (h,)
    yield "lm_head.weight", (v, h)


def generate(size: Size, dest: Path) -> None:
    """Shards of at most SHARD_BYTES, each made and saved before the next: memory stays at one shard."""
    import torch

    from orchestrator.builder.tiny import TinyShape, _config, _write_json, train_tokenizer

    if (dest / "config.json").is_file():
        print(f"{dest} exists", flush=True)
        return
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    groups, current, used = [], [], 0
    for name, shape in tensors(size):
        n = 2 * torch.Size(shape).numel()
        if current and used + n > SHARD_BYTES:
            groups.append(current)
            current, used = [], 0
        current.append((name, shape))
        used += n
    groups.append(current)
    weight_map, total = {}, 0
    for i, group in enumerate(groups, 1):
        fname = f"pytorch_model-{i:05d}-of-{len(groups):05d}.bin"
        part = {}
        for name, shape in group:
            if len(shape) == 1:
                t = 1.0 + 0.1 * torch.randn(shape, generator=gen)
            else:
                t = torch.randn(shape, generator=gen).mul_(shape[1] ** -0.5)
                if name == "lm_head.weight":  # rows of unequal norm, as a NormHead model has
                    t.mul_(torch.empty(shape[0], 1).uniform_(-2, 2, generator=gen).exp_())
            part[name] = t.to(torch.bfloat16)
            weight_map[name] = fname
            total += part[name].numel() * 2
        torch.save(part, tmp / fname)
        print(f"wrote {fname} ({sum(t.numel() for t in part.values()) * 2 / 1e9:.2f} GB)", flush=True)
        del part
    shape = TinyShape(layers=size.layers, hidden=size.hidden, heads=size.heads, ffn=size.ffn, vocab=size.vocab)
    (tmp / "tokenizer.model").write_bytes(train_tokenizer(1024, 0))
    _write_json(tmp / "config.json", _config(shape, 2, "bfloat16"))
    _write_json(tmp / "generation_config.json", {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "user_token_id": 9,
                                                 "assistant_token_id": 10, "max_new_tokens": 2048, "temperature": 0.3})
    _write_json(tmp / "tokenizer_config.json", {"add_bos_token": False, "add_eos_token": False, "tokenizer_class": "BaichuanTokenizer"})
    _write_json(tmp / "pytorch_model.bin.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})
    os.replace(tmp, dest)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["generate", "run"])
    p.add_argument("--size", choices=list(SIZES), default="7b")
    p.add_argument("--work", type=Path, default=HERE / "work")
    p.add_argument("--only", default="abc", help="which pipelines to run (a, b, c); c needs the whole model in memory")
    p.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    args = p.parse_args()
    size = SIZES[args.size]
    ckpt = args.work / f"baichuan2-{args.size}-random"
    if args.what == "generate":
        generate(size, ckpt)
        return
    checkpoint_bytes = sum(f.stat().st_size for f in ckpt.glob("pytorch_model*.bin"))
    tree = provision.locate(None).root
    env = os.environ | {"XDG_CACHE_HOME": str(args.work / "cache"), "XDG_DATA_HOME": str(args.work / "data"),
                        provision.ENV_OVERRIDE: str(tree)}
    results = {}
    for name, steps in pipelines(ckpt, args.work / "full-runs", tree, RECIPE).items():
        if name not in args.only:
            continue
        shutil.rmtree(args.work / "full-runs" / name, ignore_errors=True)
        (args.work / "full-runs" / name).mkdir(parents=True)
        results[name] = measure(steps, env)
        record = args.work / "full-runs" / name / "build.json"
        if record.is_file():  # orch's own account of its stages: what the quality report cost, say
            results[name]["timings"] = json.loads(record.read_text())["timings"]
        print(json.dumps({name: results[name]}), flush=True)
        shutil.rmtree(args.work / "full-runs" / name, ignore_errors=True)  # the next pipeline needs the disk
    (args.work / f"full-size-{args.size}.json").write_text(json.dumps({"checkpoint_bytes": checkpoint_bytes, "results": results}, indent=2))
    write_results(args, size, checkpoint_bytes, results)


def ram_bytes() -> int:
    return psutil.virtual_memory().total


def write_results(args, size: Size, checkpoint_bytes: int, results: dict) -> None:
    labels = {"a": "(a) orch build --quant q4_K_M --no-register",
              "b": "(b) converter alone (crash fixed, no NormHead) + quantizer",
              "c": "(c) README recipe (load all, normalise, save) + convert + quantize"}
    gib = 2 ** 30
    lines = [f"## Build at full size ({args.size.upper()})", "",
             f"Measured {time.strftime('%Y-%m-%d')} by `python benchmarks/full_size_benchmark.py run --size {args.size}`, one run each,",
             "one after another, nothing else running." + (
                 " The checkpoint fits in the page cache, which is warm." if checkpoint_bytes < ram_bytes()
                 else " The checkpoint is larger than RAM, so every pipeline reads it from disk."), "",
             f"- Machine: {machine()}",
             f"- Checkpoint: random Baichuan2-{args.size.upper()} dimensions ({size.layers} layers, hidden {size.hidden}, ffn {size.ffn}, "
             f"vocab {size.vocab}), bf16, {checkpoint_bytes / 1e9:.1f} GB in 2 GiB pytorch_model-*.bin shards",
             "- Memory: summed over each pipeline's process tree, sampled every 50 ms; anonymous = RssAnon.", "",
             "| pipeline | wall time (s) | peak RSS (GiB) | peak anonymous (GiB) | anonymous / checkpoint |",
             "|---|---:|---:|---:|---:|"]
    for k, r in results.items():
        lines.append(f"| {labels[k]} | {r['seconds']:.0f} | {r['peak_rss'] / gib:.2f} | {r['peak_anon'] / gib:.2f} | "
                     f"{r['peak_anon'] / checkpoint_bytes:.2f} |")
    lines += ["", "Per step, and the peak anonymous memory of each process in it:", "",
              "| pipeline | step | seconds | peak RSS (GiB) | peak anonymous (GiB) | by process (GiB) |", "|---|---|---:|---:|---:|---|"]
    for k, r in results.items():
        for s in r["steps"]:
            who = ", ".join(f"{name} {b / gib:.2f}" for name, b in sorted(s["peak_anon_by_process"].items(), key=lambda kv: -kv[1]))
            lines.append(f"| {k} | `{s['cmd']}` | {s['seconds']:.0f} | {s['peak_rss'] / gib:.2f} | {s['peak_anon'] / gib:.2f} | {who} |")
    if "c" not in results and checkpoint_bytes > ram_bytes():
        lines += ["", f"(c) not run: its first step loads the whole {checkpoint_bytes / 1e9:.1f} GB checkpoint into memory, "
                  f"and this machine has {ram_bytes() / gib:.0f} GiB."]
    if "a" in results:
        a = results["a"]
        lines += ["", "| ratio | measured | target |", "|---|---:|---:|",
                  f"| peak anonymous memory of (a) / checkpoint | {a['peak_anon'] / checkpoint_bytes:.2f} | <= 0.25 |"]
        for other in ("b", "c"):
            if other in results:
                lines.append(f"| time a/{other} | {a['seconds'] / results[other]['seconds']:.2f} | |")
        if "timings" in a and "quality" in a["timings"]:
            lines.append(f"| time a/{'c' if 'c' in results else 'b'} without the quality report | "
                         f"{(a['seconds'] - a['timings']['quality']) / results['c' if 'c' in results else 'b']['seconds']:.2f} | |")
    if "timings" in results.get("a", {}):
        t = results["a"]["timings"]
        stages = ", ".join(f"{k} {v:.0f} s" for k, v in t.items() if k not in ("total_this_run", "prepare", "fetch"))
        lines += ["", f"orch's stages in (a): {stages}.",
                  f"The quality report (KL divergence, top-1 agreement and perplexity of q4_K_M against the F16 on "
                  f"{512} calibration tokens) cost {t.get('quality', 0):.0f} s, {t.get('quality', 0) / t['total_this_run']:.0%} of the build."]
    lines += ["", "### Reading the figures", "",
              "- Anonymous memory is what a small machine must have; RSS also counts pages of the memory-mapped checkpoint and GGUFs,",
              "  which the kernel drops under pressure. (c) holds the whole checkpoint in anonymous memory to rewrite it.",
              "- The largest anonymous allocation of (a) is llama.cpp's quantizer: it widens each tensor whole to float32 before",
              "  quantizing, and the 125696-row output tensor is the largest. orch no longer adds to it: the converter widens the",
              "  two vocabulary-sized tensors (and applies NormHead) a block of rows at a time (compare the shim in (a) and (b)),",
              "  verification loads the GGUF without llama.cpp's CPU repacking (which had copied the weights into anonymous",
              "  memory), and the quality report runs in its own process after the quantizer has finished.",
              "- (a) does work (b) and (c) do not: the quality report, sha256 of the sources (on the other core, beside the",
              "  converter), verification. (b) makes a model that answers wrong (no NormHead): it is the floor, not an alternative."]
    write_section(f"full-{args.size}", lines, args.results, script="full_size_benchmark.py")


if __name__ == "__main__":
    main()
