"""The build's record of finished stages, which makes every stage resumable.

A stage counts as done when its record, keyed by a fingerprint of its inputs,
is in .orch/state.json and its outputs still exist at the recorded sizes (a
size check, not a re-hash: re-reading gigabytes on every resume would cost
what the stage did; the fingerprint already names the inputs).
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

from orchestrator.files import write_text


def fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class BuildState:
    """Finished stages of one build directory, kept in .orch/state.json."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.stages: dict[str, dict] = {}
        self._lock = threading.Lock()  # stages may finish on two threads (hashing runs beside conversion)
        if self.path.is_file():
            self.stages = json.loads(self.path.read_text()).get("stages", {})

    def done(self, key: str, fp: str, outputs: list[Path] = ()) -> dict | None:
        """The stage's record when it ran with these inputs and its outputs are still there whole."""
        record = self.stages.get(key)
        if not record or record.get("fingerprint") != fp:
            return None
        size = record["result"].get("size")
        if not all(p.is_file() and (size is None or p.stat().st_size == size) for p in outputs):
            return None
        return record

    def record(self, key: str, fp: str, result: dict, seconds: float) -> dict:
        with self._lock:
            self.stages[key] = {"fingerprint": fp, "result": result, "seconds": round(seconds, 3)}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_text(self.path, json.dumps({"stages": self.stages}, indent=2))
            return self.stages[key]
