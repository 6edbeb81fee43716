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
