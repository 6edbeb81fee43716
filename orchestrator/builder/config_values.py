"""Values taken from a checkpoint's JSON files, type-checked before anything uses them.

A downloaded config.json or generation_config.json is a stranger's text: its
values end up in the Modelfile, in llama.cpp's arguments and in build.json, so
numbers must be numbers in a sane range, ids must be in the vocabulary, and
names must be plain strings. Anything else is one line naming the file, the key
and the fix.
"""

from __future__ import annotations

import math

from orchestrator.errors import BadInput

MISSING = object()


def _refuse(file: str, key: str, value, want: str):
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return BadInput(f"{file} {key} is {shown}, not {want}: fix {file}, or use the model's original one")


def integer(values: dict, file: str, key: str, *, lo: int, hi: int, default=MISSING):
    """An int in [lo, hi] (a JSON number without a fraction; booleans and strings are refused)."""
    if values.get(key) is None:
        if default is MISSING:
            raise BadInput(f"{file} has no {key}: fix {file}, or use the model's original one")
        return default
    value = values[key]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _refuse(file, key, values.get(key), f"a whole number from {lo} to {hi}")
    return value


def number(values: dict, file: str, key: str, *, lo: float, hi: float, default=None):
    """A finite int or float in [lo, hi], as a float."""
    if values.get(key) is None:
        return default
    value = values[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not lo <= value <= hi:
        raise _refuse(file, key, value, f"a number from {lo:g} to {hi:g}")
    return float(value)


def names(values: dict, file: str, key: str) -> list[str]:
    """A list of plain one-line strings (absent: empty)."""
    value = values.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and "\n" not in v and len(v) < 200 for v in value):
        raise _refuse(file, key, value, "a list of names")
    return value


def name(values: dict, file: str, key: str) -> str | None:
    value = values.get(key)
    if value is not None and (not isinstance(value, str) or "\n" in value or len(value) >= 200):
        raise _refuse(file, key, value, "a name")
    return value


def mapping(values: dict, file: str, key: str) -> dict | None:
    value = values.get(key)
    if value is not None and not isinstance(value, dict):
        raise _refuse(file, key, value, "an object")
    return value
