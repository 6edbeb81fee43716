"""The build plan: what `orch build` will make and where, decided before any work is done."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from orchestrator import names, paths
from orchestrator.builder import quants
from orchestrator.builder.catalog import Source, slug
from orchestrator.errors import BadInput


@dataclass(frozen=True)
class Artifact:
    quant: str
    gguf: str
    modelfile: str
    ollama_name: str


@dataclass(frozen=True)
class BuildPlan:
    source: Source
    output: Path
    quants: tuple[str, ...]
    base_type: str
    artifacts: tuple[Artifact, ...]
    system: str | None = None
    force: bool = False
    llama_cpp: Path | None = None
    adapter: str | None = None  # a PEFT LoRA adapter (directory or hub repo) merged into the base
    evaluate: bool = True  # the quality report for every quantized type
    eval_tokens: int = 512
    min_top1: float | None = None  # fail the build when a type's top-1 agreement is below this
    imatrix: str | None = None  # "compute" (on the calibration text) or the path of an importance matrix to use

    @property
    def stem(self) -> str:
        """What the files (and the default Ollama name) are called: the adapter's name when there is one."""
        return adapter_name(self.adapter) if self.adapter else self.source.name

    @property
    def work(self) -> Path:
        return self.output / ".orch"

    @property
    def base_gguf(self) -> Path:
        """The converter's output: an artifact when that type was asked for, else an intermediate in .orch/."""
        for a in self.artifacts:
            if a.quant == self.base_type:
                return self.output / a.gguf
        return self.work / f"{self.stem}.{self.base_type}.gguf"


def make_plan(
    source: Source,
    *,
    quant: str = quants.DEFAULT,
    output: Path | None = None,
    name: str | None = None,
    system: str | None = None,
    force: bool = False,
    llama_cpp: Path | None = None,
    adapter: str | None = None,
    evaluate: bool = True,
    eval_tokens: int = 512,
    min_top1: float | None = None,
    imatrix: str | None = None,
) -> BuildPlan:
    types = quants.parse(quant)
    if eval_tokens < 16:
        raise BadInput(f"--eval-tokens {eval_tokens}: the report needs at least 16 tokens")
    if min_top1 is not None and not 0 <= min_top1 <= 1:
        raise BadInput(f"--min-top1 {min_top1} is not a share between 0 and 1, e.g. --min-top1 0.9")
    if min_top1 is not None and not evaluate:
        raise BadInput("--min-top1 needs the quality report: drop --no-eval")
    if imatrix is None and (needing := [q for q in types if q in quants.NEEDS_IMATRIX]):
        raise BadInput(f"{', '.join(q.lower() for q in needing)} needs an importance matrix: add --imatrix (computed on orch's "
                       "calibration text) or --imatrix FILE")
    if imatrix not in (None, "compute"):
        if not Path(imatrix).expanduser().is_file():
            raise BadInput(f"--imatrix {imatrix} is not a file: pass an importance matrix made by llama-imatrix, or --imatrix alone")
        imatrix = str(Path(imatrix).expanduser().resolve())
    if imatrix and not any(q in quants.QUANTIZED for q in types):
        raise BadInput("--imatrix guides quantization: ask for a quantized type too, e.g. --quant q4_K_M")
    if name is not None:
        names.validate(name)
    requested_base = [q for q in quants.UNQUANTIZED if q in types]
    base_type = requested_base[0] if requested_base else "F16"
    stem = adapter_name(adapter) if adapter else source.name
    artifacts = []
    for i, q in enumerate(types):
        if name is None:
            ollama = f"{stem}:{quants.tag(q)}"
        else:
            model, _, tag = name.partition(":")
            ollama = f"{model}:{tag or 'latest'}" if i == 0 else f"{model}:{tag + '-' if tag else ''}{quants.tag(q)}"
        names.validate(ollama)
        artifacts.append(Artifact(q, f"{stem}.{q}.gguf", f"{stem}.{q}.Modelfile", ollama))
    out = Path(output).expanduser().resolve() if output else paths.default_build_dir(stem)
    return BuildPlan(source=source, output=out, quants=types, base_type=base_type, artifacts=tuple(artifacts),
                     system=system, force=force, llama_cpp=llama_cpp, adapter=adapter, evaluate=evaluate, eval_tokens=eval_tokens,
                     min_top1=min_top1, imatrix=imatrix)


def adapter_name(spec: str) -> str:
    """An adapter's name for its build: the repo's, or the directory's (with its parent's before a bare checkpoint-N)."""
    if "/" in spec and not Path(spec).expanduser().exists():
        return slug(spec.rstrip("/").split("/")[-1])
    path = Path(spec).expanduser().resolve()
    name = f"{path.parent.name}-{path.name}" if re.fullmatch(r"checkpoint-\d+", path.name) else path.name
    return slug(name)
