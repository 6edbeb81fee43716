"""Ollama Modelfiles rendered from the templates in modelfiles/."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from orchestrator import __version__
from orchestrator.errors import OrchError
from orchestrator.prompt import ChatMarkers

NUM_CTX = 4096


def templates_dir() -> Path:
    """modelfiles/ inside an installed wheel, else at the repository root (editable install)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "modelfiles", here.parent / "modelfiles"):
        if candidate.is_dir():
            return candidate
    raise OrchError("orch's modelfiles/ directory is missing: reinstall orch")


@dataclass(frozen=True)
class ModelfileSpec:
    gguf: str
    modelfile_name: str
    ollama_name: str
    title: str
    source: str
    markers: ChatMarkers | None
    parameters: dict
    system: str | None
    license: str


def render(spec: ModelfileSpec) -> str:
    kind = "chat" if spec.markers else "base"
    text = (templates_dir() / f"baichuan2-{kind}.Modelfile.in").read_text(encoding="utf-8")
    params = dict(spec.parameters)
    params["num_ctx"] = NUM_CTX
    values = {
        "TITLE": spec.title,
        "ORCH_VERSION": __version__,
        "SOURCE": spec.source,
        "OLLAMA_NAME": spec.ollama_name,
        "MODELFILE_NAME": spec.modelfile_name,
        "GGUF": spec.gguf,
        "SYSTEM": f'SYSTEM """{_triple_quotable(spec.system, "--system")}"""' if spec.system else "",
        "PARAMETERS": "\n".join(f"PARAMETER {k} {_format(v)}" for k, v in params.items()),
        "LICENSE": spec.license.replace('"""', '"'),
    }
    if spec.markers:
        values |= {"USER_PIECE": spec.markers.user_piece, "ASSISTANT_PIECE": spec.markers.assistant_piece}
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def license_text(model_dir: Path, license_files: tuple[str, ...]) -> str:
    parts = [(templates_dir() / "baichuan2-license.txt").read_text(encoding="utf-8").strip()]
    for name in license_files:
        parts.append((Path(model_dir) / name).read_text(encoding="utf-8", errors="replace").strip())
    return "\n\n".join(parts)


def validate_system(system: str | None) -> None:
    if system is not None:
        _triple_quotable(system, "--system")


def _triple_quotable(text: str, what: str) -> str:
    if '"""' in text:
        raise OrchError(f'{what} contains """, which a Modelfile cannot quote: remove it')
    return text


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
