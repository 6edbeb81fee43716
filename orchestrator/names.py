"""Ollama model names, `[namespace/]model[:tag]`: the one rule, shared by build (naming artifacts) and ollama (registering)."""

from __future__ import annotations

import re

from orchestrator.errors import BadInput

_PART = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
OLLAMA_NAME = re.compile(rf"^(?:{_PART}/)?{_PART}(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?$")


def validate(name: str) -> str:
    if not OLLAMA_NAME.fullmatch(name) or len(name) > 350:  # fullmatch: `$` alone lets a trailing newline through
        raise BadInput(f"{name!r} is not a valid Ollama model name: use [namespace/]model[:tag] with letters, digits, '_', '-' "
                       "and '.', e.g. mybot:v1")
    return name


def full(name: str) -> str:
    """The name with its tag spelled out, as the server lists it (mybot -> mybot:latest)."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def is_served(wanted: str, served: list[str]) -> bool:
    """Whether a server listing `served` has `wanted` (which may leave out its :latest)."""
    return wanted in served or full(wanted) in served


def not_served(wanted: str, served: list[str], where: str) -> str:
    """The line for a model a server lacks: the nearest names it has (a tag mistyped or left out), else all it has."""
    import difflib

    if not served:
        return f"{wanted} is not on the server at {where}, which has no models: orch build tiny, or orch register a build"
    base = wanted.split(":", 1)[0]
    near = [m for m in served if m.split(":", 1)[0] == base] if ":" not in wanted else []  # `tiny` for tiny:q4_K_M
    near = near or difflib.get_close_matches(full(wanted), served, n=3, cutoff=0.6)
    if near:
        return f"{wanted} is not on the server at {where}: did you mean {' or '.join(near[:3])}?"
    shown = ", ".join(served[:8]) + (f" and {len(served) - 8} more" if len(served) > 8 else "")
    return f"{wanted} is not on the server at {where}, which has {shown}: orch build it, or orch register a build"
