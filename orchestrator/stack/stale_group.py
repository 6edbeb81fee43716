"""Start a program after killing what its previous run left behind in its process group.

    python -m orchestrator.stack.stale_group GROUP_FILE NAME [NAME ...] -- PROGRAM [ARGS ...]

Ollama runs each model in a llama-server child of its own process group, and
sets nothing that ends that child with it. When `ollama serve` is killed
(kill -9, the OOM killer), supervisord starts a new one, and the old
llama-server keeps its memory (gigabytes; on a GPU, its VRAM) for good. So the
native stack starts Ollama through this: it kills the processes named NAME
still in the group recorded in GROUP_FILE, records its own group (supervisord
makes each program a group leader), and becomes PROGRAM (exec: same pid).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


def leftovers(group: int, names: set[str]) -> list[int]:
    """Processes still in process group `group` whose name is one of `names` (a recycled group id is left alone)."""
    import psutil

    found = []
    for p in psutil.process_iter(["pid", "name"]):
        try:
            if p.info["name"] in names and os.getpgid(p.info["pid"]) == group and p.info["pid"] != os.getpid():
                found.append(p.info["pid"])
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return found


def main(argv: list[str]) -> int:
    if "--" not in argv or argv.index("--") < 2 or argv.index("--") == len(argv) - 1:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    split = argv.index("--")
    record, names, command = Path(argv[0]), set(argv[1:split]), argv[split + 1:]
    try:
        previous = int(record.read_text().strip())
    except (OSError, ValueError):
        previous = None
    if previous is not None and previous != os.getpgrp():
        for pid in leftovers(previous, names):
            print(f"orch: killing {pid}, left running by the previous {command[0]} (process group {previous})", file=sys.stderr,
                  flush=True)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(f"{os.getpgrp()}\n")
    os.execvp(command[0], command)
    return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
