"""q8_0 and q4_K_M builds load and generate; their top-1 agreement with f16 is measured and kept as an artifact."""

from __future__ import annotations

import json

import numpy as np
import pytest
from llama_cpp import Llama

from support import build_record, gguf_logits

PROMPTS = [[1, *range(40, 72)], [1, *range(300, 340, 2)], [1, *range(700, 1000, 9)]]


@pytest.fixture(scope="module")
def agreement(built, artifacts_dir):
    out = built(32)
    f16 = gguf_logits(next(out.glob("*.F16.gguf")), PROMPTS)
    figures = {}
    for quant in ("Q8_0", "Q4_K_M"):
        got = gguf_logits(next(out.glob(f"*.{quant}.gguf")), PROMPTS)
        same = sum(int((g.argmax(-1) == w.argmax(-1)).sum()) for g, w in zip(got, f16))
        total = sum(len(w) for w in f16)
        cos = min(float(min(gi @ wi / (np.linalg.norm(gi) * np.linalg.norm(wi)) for gi, wi in zip(g, w))) for g, w in zip(got, f16))
        figures[quant] = {"top1_agreement_with_f16": round(same / total, 4), "positions": total, "min_cosine_with_f16": round(cos, 5)}
    (artifacts_dir / "quant-agreement.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(f"\ntop-1 agreement with F16 (32-layer tiny model): {figures}")
    return figures


@pytest.mark.parametrize("quant", ["Q8_0", "Q4_K_M"])
def test_quantized_build_loads_and_generates(built, quant):
    out = built(32)
    record = next(a for a in build_record(out)["artifacts"] if a["type"] == quant)
    assert record["verify"]["generated_tokens"] > 0
    llm = Llama(model_path=str(out / record["file"]), n_ctx=128, verbose=False)
    try:
        assert llm.metadata["general.file_type"] == {"Q8_0": "7", "Q4_K_M": "15"}[quant]
        text = llm("The quick brown fox", max_tokens=6, temperature=0.0)["choices"][0]["text"]
        assert llm.tokenize(text.encode(), add_bos=False), "no tokens generated"
    finally:
        llm.close()


def test_quantized_outputs_mostly_agree_with_f16(agreement):
    """q8_0 is nearly lossless; q4_K_M, on a model this small, must still track f16 far above chance (1/1024)."""
    assert agreement["Q8_0"]["top1_agreement_with_f16"] >= 0.9
    assert agreement["Q4_K_M"]["top1_agreement_with_f16"] >= 0.5
    assert agreement["Q8_0"]["min_cosine_with_f16"] > agreement["Q4_K_M"]["min_cosine_with_f16"]
