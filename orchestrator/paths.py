"""Where orch keeps its cache and its builds (XDG base directories)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "orch"


def data_home() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "orch"


def default_build_dir(slug: str) -> Path:
    return data_home() / "builds" / slug
