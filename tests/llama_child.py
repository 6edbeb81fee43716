"""llama.cpp work for the tests, in a child process: a crash inside llama.cpp fails one test, named with the CPU's features.

    python tests/llama_child.py < request.json

logits: {"gguf", "sequences", "settings": "f32-kv" | "report", "out"}: one array per sequence in an .npz at "out".
generate: {"gguf", "prompt", "tokens", "repack"}: prints the greedy completion and its usage as JSON.
greedy: {"gguf", "ids", "tokens", "repack", "flash_attn"}: prints the greedy continuation of the prompt ids, its text, and
    each step's top-2 logits.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from orchestrator.builder.llamacpp.load import load, score_all, scoring


def logits(req: dict) -> None:
    seqs = req["sequences"]
    if req["settings"] == "report":  # exactly what the quality report scores with
        llm = scoring(Path(req["gguf"]), max(len(s) for s in seqs))
    else:  # an f32 KV cache, so that differences come from the weights, not the cache
        llm = load(Path(req["gguf"]), n_ctx=512, logits_all=True, type_k=0, type_v=0, seed=0)
    try:
        out = []
        for seq in seqs:
            llm.reset()
            if req["settings"] == "report":
                score_all(llm, seq)
            else:
                llm.eval(seq)
            out.append(np.array(llm.scores[: len(seq)], dtype=np.float64))
        np.savez(req["out"], *out)
    finally:
        llm.close()


def generate(req: dict) -> None:
    llm = load(Path(req["gguf"]), repack=req["repack"], n_ctx=512, seed=0)
    try:
        prompt = llm.tokenize(req["prompt"].encode(), add_bos=True, special=True)
        done = llm.create_completion(prompt=prompt, max_tokens=req["tokens"], temperature=0.0)
        print(json.dumps({"text": done["choices"][0]["text"], "usage": done["usage"],
                          "file_type": llm.metadata.get("general.file_type")}))
    finally:
        llm.close()


def greedy(req: dict) -> None:
    llm = load(Path(req["gguf"]), repack=req["repack"], flash_attn=req["flash_attn"], n_ctx=512, logits_all=True, seed=0)
    try:
        ids, out, top2 = list(req["ids"]), [], []
        llm.eval(ids)
        for _ in range(req["tokens"]):
            scores = np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float64)
            first, second = np.argsort(scores)[::-1][:2]
            out.append(int(first))
            top2.append([[int(first), float(scores[first])], [int(second), float(scores[second])]])
            if first == llm.token_eos():
                break
            llm.eval([int(first)])
        prefixes = [llm.detokenize(out[: i + 1]).decode(errors="replace") for i in range(len(out))]
        print(json.dumps({"ids": out, "text": prefixes[-1] if out else "", "prefixes": prefixes, "top2": top2}))
    finally:
        llm.close()


if __name__ == "__main__":
    request = json.loads(sys.stdin.read())
    {"logits": logits, "generate": generate, "greedy": greedy}[request["do"]](request)
