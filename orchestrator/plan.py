"""The build plan: what `orch build` will make and where, decided before any work is done."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator import paths
from orchestrator.catalog import Source
from orchestrator.errors import OrchError

# Output types: the converter writes the unquantized ones, llama.cpp's quantizer the rest.
# Bits per weight are estimates for sizing and disk checks.
UNQUANTIZED = {"F32": 32.0, "BF16": 16.0, "F16": 16.0}
QUANTIZED = {
    "Q8_0": 8.5, "Q6_K": 6.56, "Q5_K_M": 5.69, "Q5_K_S": 5.54, "Q5_1": 6.0, "Q5_0": 5.5,
    "Q4_K_M": 4.89, "Q4_K_S": 4.58, "Q4_1": 5.0, "Q4_0": 4.5, "IQ4_NL": 4.5, "IQ4_XS": 4.25,
    "Q3_K_L": 4.27, "Q3_K_M": 3.91, "Q3_K_S": 3.5, "Q2_K": 3.35,
}
BITS = UNQUANTIZED | QUANTIZED
DEFAULT_QUANT = "Q4_K_M"
_LOOKUP = {k.lower(): k for k in BITS}
_NAME_PART = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
OLLAMA_NAME = re.compile(rf"^(?:{_NAME_PART}/)?{_NAME_PART}(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?$")


def parse_quants(text: str) -> tuple[str, ...]:
    """'q4_K_M,q8_0' -> ('Q4_K_M', 'Q8_0'), in the order given, each once."""
    out: list[str] = []
    for raw in (t.strip() for t in text.split(",")):
        if not raw:
            continue
        canon = _LOOKUP.get(raw.lower())
        if canon is None:
            raise OrchError(f"unknown quant type {raw!r}: use one of {', '.join(k.lower() if k in UNQUANTIZED else k for k in BITS)}")
        if canon not in out:
            out.append(canon)
    if not out:
        raise OrchError("--quant is empty: give one or more types, e.g. --quant q4_K_M,q8_0")
    return tuple(out)


def validate_ollama_name(name: str) -> str:
    if not OLLAMA_NAME.match(name) or len(name) > 350:
        raise OrchError(f"{name!r} is not a valid Ollama model name: use [namespace/]model[:tag] with letters, digits, '_', '-' and '.', e.g. mybot:v1")
    return name


def tag_name(quant: str) -> str:
    """Ollama-style tag for a type: q4_K_M, q8_0, f16."""
    return quant[0].lower() + quant[1:]


@dataclass(frozen=True)
class Artifact:
    quant: str
    gguf: str
    modelfile: str
    ollama_name: str

    @property
    def converted(self) -> bool:
        return self.quant in UNQUANTIZED


@dataclass(frozen=True)
class BuildPlan:
    source: Source
    output: Path
    quants: tuple[str, ...]
    base_type: str
    artifacts: tuple[Artifact, ...]
    system: str | None = None
    register: bool = True
    force: bool = False
    llama_cpp: Path | None = None
    host: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def work(self) -> Path:
        return self.output / ".orch"

    @property
    def base_gguf(self) -> Path:
        """The converter's output: an artifact when that type was asked for, else an intermediate in .orch/."""
        for a in self.artifacts:
            if a.quant == self.base_type:
                return self.output / a.gguf
        return self.work / f"{self.source.name}.{self.base_type}.gguf"

    def estimate_bytes(self, n_params: int, quant: str) -> int:
        return int(n_params * BITS[quant] / 8 * 1.03) + (1 << 20)

    def describe(self) -> dict:
        return {
            "source": self.source.describe(),
            "output": str(self.output),
            "quants": list(self.quants),
            "convert_to": self.base_type,
            "artifacts": [a.__dict__ for a in self.artifacts],
            "register": self.register,
        }


def make_plan(
    source: Source,
    *,
    quant: str = DEFAULT_QUANT,
    output: Path | None = None,
    name: str | None = None,
    system: str | None = None,
    register: bool = True,
    force: bool = False,
    llama_cpp: Path | None = None,
    host: str | None = None,
) -> BuildPlan:
    quants = parse_quants(quant)
    if name is not None:
        validate_ollama_name(name)
    requested_base = [q for q in ("F32", "BF16", "F16") if q in quants]
    base_type = requested_base[0] if requested_base else "F16"
    stem = source.name
    artifacts = []
    for i, q in enumerate(quants):
        if name is None:
            ollama = f"{stem}:{tag_name(q)}"
        else:
            model, _, tag = name.partition(":")
            if i == 0:
                ollama = f"{model}:{tag or 'latest'}"
            else:
                ollama = f"{model}:{tag + '-' if tag else ''}{tag_name(q)}"
        validate_ollama_name(ollama)
        artifacts.append(Artifact(q, f"{stem}.{q}.gguf", f"{stem}.{q}.Modelfile", ollama))
    out = Path(output).expanduser().resolve() if output else paths.default_build_dir(stem)
    return BuildPlan(source=source, output=out, quants=quants, base_type=base_type, artifacts=tuple(artifacts),
                     system=system, register=register, force=force, llama_cpp=llama_cpp, host=host)
