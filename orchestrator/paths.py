"""Where orch keeps its cache and its builds (XDG base directories)."""

from __future__ import annotations

from pathlib import Path

from orchestrator.settings import cache_home, data_home  # noqa: F401  the environment is settings' to read


def default_build_dir(slug: str) -> Path:
    return data_home() / "builds" / slug


def build_or_path(target: Path) -> Path:
    """What a command given a build takes: the path itself when it exists, else the build of that name in orch's
    builds/ (`orch build tiny`, then `orch k8s render tiny`; a model:tag names its build too)."""
    text = str(target)
    if target.exists() or "/" in text or not text:
        return target
    from orchestrator.builder.catalog import slug

    for name in dict.fromkeys((text, slug(text), slug(text.split(":", 1)[0]))):
        if (candidate := default_build_dir(name)).is_dir():
            return candidate
    return target


def default_stack_dir() -> Path:
    return data_home() / "stack"


def resource_dir(name: str, installed: str | None = None) -> Path:
    """modelfiles/, compose/ or data/: inside an installed wheel (as `installed`), else at the repository root (editable install)."""
    from orchestrator.errors import OrchError

    here = Path(__file__).resolve().parent
    for candidate in (here / (installed or name), here.parent / name):
        if candidate.is_dir():
            return candidate
    raise OrchError(f"orch's {name}/ directory is missing: reinstall orch")
