"""Commands whose output a runtime streams (docker compose logs, kubectl logs)."""

from __future__ import annotations

import subprocess
from typing import Iterator


def stream(cmd: list[str]) -> Iterator[str]:
    """The lines a command prints (stdout and stderr together) as they come; the command is killed when the reader stops."""
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL) as proc:
        try:
            yield from (line.rstrip("\n") for line in proc.stdout)
        finally:
            proc.kill()
