"""The build plan: what `orch build` will make and where, decided before any work is done."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from orchestrator import names, paths
from orchestrator.build import quants
from orchestrator.build.catalog import Source


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
    register: bool = True
    force: bool = False
    llama_cpp: Path | None = None
    host: str | None = None

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


def make_plan(
    source: Source,
    *,
    quant: str = quants.DEFAULT,
    output: Path | None = None,
    name: str | None = None,
    system: str | None = None,
    register: bool = True,
    force: bool = False,
    llama_cpp: Path | None = None,
    host: str | None = None,
) -> BuildPlan:
    types = quants.parse(quant)
    if name is not None:
        names.validate(name)
    requested_base = [q for q in quants.UNQUANTIZED if q in types]
    base_type = requested_base[0] if requested_base else "F16"
    stem = source.name
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
                     system=system, register=register, force=force, llama_cpp=llama_cpp, host=host)
