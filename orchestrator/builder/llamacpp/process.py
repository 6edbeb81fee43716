"""Run a long llama.cpp job in a child process, its progress read from the size of its output."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Callable

from orchestrator.errors import OrchError
from orchestrator.events import SILENT, Reporter


def run_watched(cmd: list[str], *, watch: Path | Callable[[], int] | None, expected_bytes: int | None, what: str, log: Path,
                reporter: Reporter = SILENT, cwd: Path | None = None, env: dict | None = None, unit: str = "bytes",
                append: bool = False) -> None:
    """Run `cmd`, logging to `log`; `watch` growing towards `expected_bytes` is the progress (none: a spinner).

    `watch` is a file whose size is the work done, or a function that measures
    it (a download whose file moves). A child whose output does not grow can
    count in other units by appending a byte per unit (a token scored, say) to
    a file of its own as `watch`.

    `append` keeps what earlier steps wrote to `log`.

    A child process keeps Ctrl-C and kill prompt (a C call in this process
    would hold them until it returns) and keeps llama.cpp's memory out of ours.
    """
    done = watch if callable(watch) else (lambda: watch.stat().st_size if watch is not None and watch.exists() else 0)
    log.parent.mkdir(parents=True, exist_ok=True)
    with reporter.task(what, total=expected_bytes, unit=unit) as task, open(log, "ab" if append else "wb") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd, env=env)
        try:
            while proc.poll() is None:
                if watch is not None and expected_bytes:
                    task.update(completed=min(done(), int(expected_bytes * 0.99)))
                time.sleep(0.2)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if proc.returncode != 0:
            raise OrchError(f"{what} failed (exit {proc.returncode}): {last_error_line(log)}; full log: {log}")
        if expected_bytes:
            task.update(completed=expected_bytes)


def last_error_line(log: Path) -> str:
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    for line in reversed(lines):
        if any(w in line for w in ("Error", "error", "Exception", "failed")):
            return line[:300]
    return lines[-1][:300] if lines else "no output"
