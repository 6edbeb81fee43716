"""How the library reports progress: a small callback interface that only the CLI renders.

Long work (a download, a conversion, an upload) opens a Task and advances it;
short facts go to note(). The base Reporter drops everything, so a library
call is silent unless its caller passes one (the CLI's draws Rich bars).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Literal

PAUSE_ENV = "ORCH_DEBUG_PAUSE_AFTER"  # stop dead after a named step (the interruption tests kill the process there)
RESUME_ENV = "ORCH_DEBUG_RESUME"  # a file whose appearance lets a paused step go on (to deliver Ctrl-C mid-way)

Level = Literal["info", "warning"]


class Task:
    """One unit of long work. This one reports nowhere."""

    def advance(self, amount: float) -> None:
        pass

    def update(self, *, completed: float | None = None, total: float | None = None, description: str | None = None) -> None:
        pass

    def close(self) -> None:
        """The work is over: a bar with a total fills up, one without (a wait) disappears."""

    def __enter__(self) -> "Task":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Reporter:
    """Receives progress; subclass it to show it. This one is silent."""

    def task(self, description: str, total: float | None = None, unit: str = "bytes") -> Task:
        """`unit` names what `total` counts (bytes, tokens, ...), so that a bar can say so."""
        return Task()

    def note(self, text: str, level: Level = "info") -> None:
        pass


SILENT = Reporter()


def pause_point(stage: str) -> None:
    """Where the interruption tests stop orch dead, when $ORCH_DEBUG_PAUSE_AFTER names `stage`: it says so on stderr,
    then waits for ever, or until the file $ORCH_DEBUG_RESUME appears."""
    if os.environ.get(PAUSE_ENV) != stage:
        return
    print(f"orch: paused after {stage}", file=sys.stderr, flush=True)
    resume = os.environ.get(RESUME_ENV)
    while not (resume and Path(resume).exists()):
        time.sleep(0.05)
