"""The quality report: how closely each quantized GGUF follows the unquantized one, measured on calibration.txt.

calibration.txt and imatrix.txt ship with orch (Chinese and English prose,
instructions, a dialogue, a little code; written for the project, Apache-2.0
like orch): the report reads the first, --imatrix learns from the second. For
each quantized type, llama.cpp computes the next-token distributions over the
same tokens as for the unquantized GGUF, and the report gives:
  - mean KL divergence of the quantized distribution from the unquantized one (nats; 0 is identical),
  - top-1 agreement: the share of positions where both predict the same next token,
  - perplexity of each on the text (the unquantized one's too: the yardstick).
It runs in a child process (`python -m orchestrator.builder.quality`), so
llama.cpp's memory never joins the build's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from orchestrator.events import SILENT, Reporter
from orchestrator.files import atomic_path, sha256_file

CALIBRATION = Path(__file__).with_name("calibration.txt")
# the importance matrix learns from a different text, so that the report does not grade it on its own homework
IMATRIX_TEXT = Path(__file__).with_name("imatrix.txt")
DEFAULT_TOKENS = 512


def calibration_tokens(tokenizer_model: Path, budget: int, bos_id: int = 1, text: Path = CALIBRATION) -> list[int]:
    """A text (the calibration text by default) in the model's own tokens, after a BOS, at most `budget` in all."""
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor(model_file=str(tokenizer_model))
    return [bos_id, *sp.encode(text.read_text(encoding="utf-8"))][:budget]


def describe(tokens: list[int]) -> dict:
    return {"text": "orch's calibration.txt", "sha256": sha256_file(CALIBRATION), "tokens": len(tokens)}


def evaluate(base: Path, quantized: dict[str, Path], tokens: list[int], *, work: Path, reporter: Reporter = SILENT) -> dict[str, dict]:
    """{type: figures} for each quantized GGUF against `base`, computed in a child process."""
    from orchestrator.builder.llamacpp.process import run_watched

    request = work / "quality-request.json"
    request.write_text(json.dumps({"base": str(base), "quantized": {k: str(v) for k, v in quantized.items()}, "tokens": tokens}))
    result = work / "quality.json"
    counted = work / "quality.tokens"  # a byte per token scored: the bar's count
    counted.unlink(missing_ok=True)
    with atomic_path(result) as tmp:
        run_watched([sys.executable, "-m", __name__, str(request), str(tmp), str(counted)], watch=counted,
                    expected_bytes=len(tokens) * (1 + len(quantized)), unit="tokens",
                    what=f"quality of {', '.join(quantized)}", log=work / "logs" / "quality.log", reporter=reporter)
    counted.unlink(missing_ok=True)
    return json.loads(result.read_text())


def log_probs(gguf: Path, tokens: list[int], on_tokens=None):
    """Next-token log-probabilities at every position, float32 [positions, vocab]."""
    import numpy as np

    from orchestrator.builder.llamacpp.load import score_all, scoring

    llm = scoring(gguf, len(tokens))
    try:
        score_all(llm, tokens, on_tokens)
        out = np.empty((len(tokens), llm.n_vocab()), dtype=np.float32)
        for i in range(0, len(tokens), 64):  # float64 only a block at a time; scores has a row per slot of the context
            block = np.asarray(llm.scores[i:min(i + 64, len(tokens))], dtype=np.float64)
            block -= block.max(axis=1, keepdims=True)
            block -= np.log(np.exp(block).sum(axis=1, keepdims=True))
            out[i:i + 64] = block
        return out
    finally:
        llm.close()


def figures(base, quant, tokens: list[int]) -> dict:
    """KL divergence, top-1 agreement and perplexities from two [positions, vocab] log-probability arrays."""
    import numpy as np

    kl = []
    for i in range(0, len(tokens), 64):
        b, q = base[i:i + 64].astype(np.float64), quant[i:i + 64].astype(np.float64)
        kl.extend((np.exp(b) * (b - q)).sum(axis=1))
    nxt = np.asarray(tokens[1:])
    rows = np.arange(len(tokens) - 1)
    return {"kl_divergence": round(float(np.mean(kl)), 6), "kl_divergence_p99": round(float(np.percentile(kl, 99)), 6),
            "top1_agreement": round(float((base.argmax(axis=1) == quant.argmax(axis=1)).mean()), 4),
            "perplexity": round(float(np.exp(-quant[rows, nxt].mean())), 4),
            "perplexity_unquantized": round(float(np.exp(-base[rows, nxt].mean())), 4), "positions": len(tokens)}


def main(argv: list[str]) -> int:
    request, out, counted = Path(argv[0]), Path(argv[1]), Path(argv[2])
    job = json.loads(request.read_text())
    tokens = job["tokens"]
    with open(counted, "ab", buffering=0) as count:
        def on_tokens(n: int) -> None:
            count.write(b"." * n)

        base = log_probs(Path(job["base"]), tokens, on_tokens)
        result = {}
        for quant, path in job["quantized"].items():
            result[quant] = figures(base, log_probs(Path(path), tokens, on_tokens), tokens)
            print(f"{quant}: {result[quant]}", flush=True)
    out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
