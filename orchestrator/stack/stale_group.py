"""Start a program after killing what its previous run left behind in its process group.

    python -m orchestrator.stack.stale_group GROUP_FILE NAME [NAME ...] -- PROGRAM [ARGS ...]

Ollama runs each model in a llama-server child of its own process group, and
sets nothing that ends that child with it. When `ollama serve` is killed
(kill -9, the OOM killer), supervisord starts a new one, and the old
llama-server keeps its memory (gigabytes; on a GPU, its VRAM) for good. So the
native stack starts Ollama through this: it kills the processes named NAME
still in the group recorded in GROUP_FILE, records its own group (supervisord
makes each program a group leader), and becomes PROGRAM (exec: same pid).

A record is trusted only as far as it can be checked: it names the group, its
leader's start time, the user and the boot, and only processes of this user,
started in this boot no earlier than that leader, are killed. A record from an
older orch (a bare group id) or from before the last boot kills nothing.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from orchestrator.files import write_text


def leftovers(record: dict, names: set[str]) -> list[int]:
    """Processes still in the recorded group whose name is one of `names`, of this user, started in this boot no
    earlier than the group's leader: never a process orch did not start, whatever the record says."""
    import psutil

    boot = psutil.boot_time()
    try:
        group, started, uid = int(record["pgid"]), float(record["start"]), int(record["uid"])
        if abs(float(record["boot"]) - boot) > 2 or started < boot or uid != os.getuid():
            return []
    except (KeyError, TypeError, ValueError):
        return []
    found = []
    for p in psutil.process_iter(["pid", "name", "uids", "create_time"]):
        try:
            if (p.info["name"] in names and p.info["uids"].real == uid and p.info["create_time"] >= started - 0.01
                    and os.getpgid(p.info["pid"]) == group and p.info["pid"] != os.getpid()):
                found.append(p.info["pid"])
        except (ProcessLookupError, PermissionError, psutil.Error, AttributeError):
            continue
    return found


def this_run() -> dict:
    """What the next start needs to know of this one: its group, its start (the program's children start later, and
    exec keeps it), its user and the boot."""
    import psutil

    return {"pgid": os.getpgrp(), "start": psutil.Process().create_time(), "uid": os.getuid(), "boot": psutil.boot_time()}


def main(argv: list[str]) -> int:
    if "--" not in argv or argv.index("--") < 2 or argv.index("--") == len(argv) - 1:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    split = argv.index("--")
    record, names, command = Path(argv[0]), set(argv[1:split]), argv[split + 1:]
    try:
        previous = json.loads(record.read_text())
        previous = previous if isinstance(previous, dict) else {}
    except (OSError, ValueError):
        previous = {}
    if previous.get("pgid") != os.getpgrp():
        for pid in leftovers(previous, names):
            print(f"orch: killing {pid}, left running by the previous {command[0]} (process group {previous['pgid']})",
                  file=sys.stderr, flush=True)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    record.parent.mkdir(parents=True, exist_ok=True)
    write_text(record, json.dumps(this_run()) + "\n", mode=0o600)
    os.execvp(command[0], command)
    return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
