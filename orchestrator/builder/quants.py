"""The output types a build can make, and how many bits a weight each costs (estimates, for sizes and disk checks)."""

from __future__ import annotations

from orchestrator.errors import BadInput

# the converter writes the unquantized types, llama.cpp's quantizer the rest
UNQUANTIZED = {"F32": 32.0, "BF16": 16.0, "F16": 16.0}
QUANTIZED = {
    "Q8_0": 8.5, "Q6_K": 6.56, "Q5_K_M": 5.69, "Q5_K_S": 5.54, "Q5_1": 6.0, "Q5_0": 5.5,
    "Q4_K_M": 4.89, "Q4_K_S": 4.58, "Q4_1": 5.0, "Q4_0": 4.5, "IQ4_NL": 4.5, "IQ4_XS": 4.25,
    "Q3_K_L": 4.27, "Q3_K_M": 3.91, "Q3_K_S": 3.5, "IQ3_M": 3.66, "IQ3_XXS": 3.06, "Q2_K": 3.35, "IQ2_M": 2.7,
}
# the i-quants are only as good as the importance matrix that guides them: orch makes them with one, never without
NEEDS_IMATRIX = tuple(q for q in QUANTIZED if q.startswith("IQ"))
BITS = UNQUANTIZED | QUANTIZED
DEFAULT = "Q4_K_M"
_LOOKUP = {k.lower(): k for k in BITS}


def parse(text: str) -> tuple[str, ...]:
    """'q4_K_M,q8_0' -> ('Q4_K_M', 'Q8_0'), in the order given, each once."""
    out: list[str] = []
    for raw in (t.strip() for t in text.split(",")):
        if not raw:
            continue
        canon = _LOOKUP.get(raw.lower())
        if canon is None:
            raise BadInput(f"unknown quant type {raw!r}: use one of {', '.join(k.lower() if k in UNQUANTIZED else k for k in BITS)}")
        if canon not in out:
            out.append(canon)
    if not out:
        raise BadInput("--quant is empty: give one or more types, e.g. --quant q4_K_M,q8_0")
    return tuple(out)


def tag(quant: str) -> str:
    """Ollama-style tag for a type: q4_K_M, q8_0, f16, bf16, iq4_xs."""
    return quant.lower() if quant.startswith(("IQ", "BF", "F")) else quant[0].lower() + quant[1:]


def size_bytes(n_params: float, quant: str) -> int:
    """About how large a GGUF of `quant` is: the weights at its bits per weight, plus headers and the vocabulary."""
    return int(n_params * BITS[quant] / 8 * 1.03) + (1 << 20)
