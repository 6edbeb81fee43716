"""llama.cpp work for the tests, in a child process: a crash inside llama.cpp fails one test, named with the CPU's features.

    python tests/llama_child.py < request.json

logits: {"gguf", "sequences", "settings": "f32-kv" | "report", "out"}: one array per sequence in an .npz at "out".
generate: {"gguf", "prompt", "tokens", "repack"}: prints the greedy token ids as JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from orchestrator.builder.llamacpp.load import load, scoring


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


if __name__ == "__main__":
    request = json.loads(sys.stdin.read())
    {"logits": logits, "generate": generate}[request["do"]](request)
