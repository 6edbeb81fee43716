#!/usr/bin/env python3
"""A double of the `docker` CLI and its engine, for what orch's backup asks of a Docker stack (no engine runs here).

It answers `docker info`, `compose version`, `compose ps`, and, for the service
open-webui, `compose exec`, `compose cp` and `compose run` as the engine would,
with the container's paths mapped onto directories: its data volume
(/app/backend/data) is $DOCKER_DOUBLE_VOLUME, its /tmp a directory beside it.
$DOCKER_DOUBLE_STATE (JSON) says which services run and on which Open WebUI image;
`compose up -d` starts what compose.yaml names. An image named by
$DOCKER_DOUBLE_BROKEN_IMAGE is a release whose start fails its health check
after its migration damaged the database (it drops the chat table).
Every call is appended to $DOCKER_DOUBLE_STATE.log, so a test can read what orch ran.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

VOLUME = Path(os.environ["DOCKER_DOUBLE_VOLUME"])
STATE = Path(os.environ["DOCKER_DOUBLE_STATE"])
CONTAINER_TMP = VOLUME.parent / "container-tmp"


def mapped(text: str, extra: dict[str, str] | None = None) -> str:
    """A container path (or a command naming them) as the directories that stand for it here, in one pass."""
    table = {"/app/backend/data": str(VOLUME), "/tmp/": f"{CONTAINER_TMP}/", **(extra or {})}
    return re.sub("|".join(re.escape(k) for k in sorted(table, key=len, reverse=True)), lambda m: table[m.group(0)], text)


def state() -> dict:
    return json.loads(STATE.read_text())


def save(new: dict) -> None:
    STATE.write_text(json.dumps(new))


def running(service: str = "open-webui") -> bool:
    return service in state()["running"]


def health(service: str) -> str:
    broken = os.environ.get("DOCKER_DOUBLE_BROKEN_IMAGE")
    return "unhealthy" if service == "open-webui" and broken and state()["image"] == broken else "healthy"


def compose(args: list[str]) -> int:
    compose_file = None
    while args and args[0] in ("--project-name", "--project-directory", "-f"):
        compose_file = args[1] if args[0] == "-f" else compose_file
        args = args[2:]
    verb, rest = args[0], args[1:]
    if verb == "version":
        print("2.30.0")
    elif verb == "ps":
        print(json.dumps([{"Service": s, "State": "running", "Health": health(s)} for s in state()["running"]]))
    elif verb == "up":
        import yaml

        services = yaml.safe_load(Path(compose_file).read_text())["services"]
        save({"running": sorted(services), "image": services.get("open-webui", {}).get("image")})
        if health("open-webui") == "unhealthy":  # the bad release's migration, run at its start
            db = sqlite3.connect(VOLUME / "webui.db")
            db.execute("DROP TABLE IF EXISTS chat")
            db.commit()
            db.close()
    elif verb == "stop":
        save(state() | {"running": [s for s in state()["running"] if s not in rest]})
    elif verb == "exec":
        if not running():
            print("service \"open-webui\" is not running", file=sys.stderr)
            return 1
        command = [mapped(a) for a in rest if a != "-T"][1:]  # the service name, then the command
        CONTAINER_TMP.mkdir(exist_ok=True)
        if command[0] == "python3":  # the container's Python: this one (after mapping: its own path may be under /tmp)
            command[0] = sys.executable
        return subprocess.run(command).returncode
    elif verb == "cp":
        source, dest = rest
        source = mapped(source.split(":", 1)[1])
        if source.endswith("/."):
            shutil.copytree(source[:-2], dest, dirs_exist_ok=True)
        else:
            shutil.copy2(source, dest)
    elif verb == "run":
        if running():
            print("the double's engine holds the volume while the stack runs", file=sys.stderr)
            return 1
        volumes, i, command = {}, 0, []
        while i < len(rest):
            if rest[i] == "-v":
                host, inside = rest[i + 1].split(":")[:2]
                volumes[inside] = host
                i += 2
            elif rest[i] == "--entrypoint":
                command.append(rest[i + 1])
                i += 2
            elif rest[i].startswith("-"):
                i += 1
            else:  # the service, then the arguments to the entrypoint
                command += rest[i + 1:]
                break
        return subprocess.run([mapped(a, volumes) for a in command]).returncode
    elif verb == "down":
        save(state() | {"running": []})
    else:
        print(f"docker double: compose {verb} is not simulated", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str]) -> int:
    with open(f"{STATE}.log", "a") as log:
        log.write(json.dumps(argv) + "\n")
    if argv[:1] == ["info"]:
        print("27.3.1|/var/lib/docker")
        return 0
    if argv[:1] == ["compose"]:
        return compose(argv[1:])
    print(f"docker double: {' '.join(argv[:2])} is not simulated", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
