"""Commands whose output a runtime streams (docker compose logs, kubectl logs)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Iterator

from orchestrator.errors import OrchError


def stream(cmd: list[str]) -> Iterator[str]:
    """The lines a command prints (stdout and stderr together) as they come; the command is killed when the reader stops.

    A command that fails is an OrchError with its exit code and last line, once its output has been passed on.
    """
    last = ""
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL) as proc:
        try:
            for line in proc.stdout:
                last = line.strip() or last
                yield line.rstrip("\n")
        finally:
            if proc.poll() is None:
                proc.kill()
        code = proc.wait()
    if code > 0:
        raise OrchError(f"{Path(cmd[0]).name} {cmd[1] if len(cmd) > 1 else ''} failed (exit {code}): {last[:200] or 'no output'}")
