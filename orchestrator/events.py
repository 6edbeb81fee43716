"""How the library reports progress: a small callback interface that only the CLI renders.

Long work (a download, a conversion, an upload) opens a Task and advances it;
short facts go to note(). The base Reporter drops everything, so a library
call is silent unless its caller passes one (the CLI's draws Rich bars).
"""

from __future__ import annotations

from typing import Literal

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

    def reached(self, step: str) -> None:
        """A named step of work that must survive a kill at any instant is done (a restore's renames): nothing to show,
        but where a test stops the process to prove it."""


SILENT = Reporter()
