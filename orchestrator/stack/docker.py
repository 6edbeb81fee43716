"""The docker runtime: the rendered compose stack, run with `docker compose`."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Iterator

from orchestrator.errors import OrchError
from orchestrator.events import Reporter
from orchestrator.stack import compose, preflight
from orchestrator.stack.config import StackPlan
from orchestrator.stack.process import stream
from orchestrator.stack.runtime import ServiceState, Started

PROJECT = "orch"
WEBUI_DATA = "/app/backend/data"  # Open WebUI's DATA_DIR in its container: the open-webui volume
SNAPSHOT = "/tmp/orch-backup-webui.db"  # the database's consistent copy, made inside the container
# run by the container's own Python: SQLite's online backup API, so a backup taken while Open WebUI writes is consistent
SNAPSHOT_SCRIPT = ("import sqlite3; s = sqlite3.connect('file:" + WEBUI_DATA + "/webui.db?mode=ro', uri=True, timeout=30); "
                   "d = sqlite3.connect('" + SNAPSHOT + "'); s.backup(d); d.close(); s.close()")


class Compose:
    """`docker compose` for one stack directory."""

    def __init__(self, docker: str, directory: Path):
        self.docker, self.directory = docker, directory

    def command(self, *args: str) -> list[str]:
        return [self.docker, "compose", "--project-name", PROJECT, "--project-directory", str(self.directory),
                "-f", str(self.directory / "compose.yaml"), *args]

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(self.command(*args), capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise OrchError(f"docker compose {args[0]} failed ({preflight.first_line(proc.stderr or '')}): "
                            f"see docker compose logs in {self.directory}")
        return proc

    def running(self) -> list[dict]:
        proc = self.run("ps", "--format", "json", check=False)
        if proc.returncode != 0 or not proc.stdout.strip():
            return []
        text = proc.stdout.strip()  # one JSON array, or one object a line, depending on the compose version
        return json.loads(text) if text.startswith("[") else [json.loads(line) for line in text.splitlines() if line.strip()]

    def wait_healthy(self, services: list[str], timeout: float, reporter: Reporter) -> None:
        deadline = time.monotonic() + timeout
        with reporter.task("waiting for the stack") as task:
            while True:
                states = {r.get("Service"): (r.get("Health") or r.get("State") or "") for r in self.running()}
                task.update(description="waiting: " + ", ".join(f"{s} {states.get(s, 'starting')}" for s in services))
                if all(states.get(s) == "healthy" for s in services):
                    return
                bad = [s for s in services if states.get(s) in ("unhealthy", "exited", "dead")]
                if bad:
                    raise OrchError(f"{', '.join(bad)} did not come up healthy: orch logs {bad[0]}")
                if time.monotonic() > deadline:
                    raise OrchError(f"the stack was not healthy within {timeout:g} s ({states}): orch logs, then orch up again")
                time.sleep(2)


class DockerRuntime:
    name = "docker"

    def _compose(self, directory: Path) -> Compose:
        docker = preflight.docker_binary()
        preflight.docker_daemon(docker)
        return Compose(docker, directory)

    def preflight(self, plan: StackPlan) -> None:
        """Ports free, Docker present, daemon reachable, compose plugin, disk.

        Ports are checked first on a fresh stack (nothing of ours can hold them);
        once a stack exists its own running containers may hold them, so those are
        asked about through Docker first.
        """
        fresh = not (plan.directory / "compose.yaml").is_file()
        if fresh:
            _ports_free(plan, held=set())
        docker = preflight.docker_binary()
        info = preflight.docker_daemon(docker)
        preflight.compose_plugin(docker)
        if not fresh:
            _ports_free(plan, held={r.get("Service") for r in Compose(docker, plan.directory).running()})
        preflight.disk(Path(info["root"]) if info["root"] else plan.directory)

    def up(self, plan: StackPlan, *, wait: float, reporter: Reporter) -> Started:
        runner = Compose(preflight.docker_binary(), plan.directory)
        env, created, changed, doc = compose.write_stack(plan)
        runner.run("up", "-d", "--remove-orphans")
        runner.wait_healthy(list(doc["services"]), wait, reporter)
        return Started(env, created, changed)

    def down(self, directory: Path, *, volumes: bool = False) -> list[str]:
        self._compose(directory).run("down", *(["--volumes"] if volumes else []))
        return ["the compose stack"]

    def status(self, directory: Path) -> list[ServiceState]:
        return [ServiceState(r.get("Service", "?"), (r.get("State") or "unknown").lower(),
                             " ".join(x for x in (r.get("Health"), r.get("Image")) if x))
                for r in self._compose(directory).running()]

    def logs(self, directory: Path, services: list[str] | None = None, *, follow: bool = False) -> Iterator[str]:
        yield from stream(self._compose(directory).command("logs", "--tail", "200", *(["--follow"] if follow else []), *(services or [])))

    def copy_webui_data(self, directory: Path, into: Path) -> None:
        """Open WebUI's data out of its running container into `into`: the database through SQLite's backup API inside
        the container, everything else with docker compose cp."""
        c = self._compose(directory)
        if "open-webui" not in {r.get("Service") for r in c.running()}:
            raise OrchError("Open WebUI is not running, and its data is in a Docker volume: start it with orch up, then back up")
        c.run("exec", "-T", "open-webui", "python3", "-c", SNAPSHOT_SCRIPT)
        try:
            into.mkdir(parents=True, exist_ok=True)
            c.run("cp", f"open-webui:{WEBUI_DATA}/.", str(into))
            for live in into.glob("webui.db*"):  # the live files, possibly mid-write: the snapshot replaces them
                live.unlink()
            c.run("cp", f"open-webui:{SNAPSHOT}", str(into / "webui.db"))
        finally:
            c.run("exec", "-T", "open-webui", "rm", "-f", SNAPSHOT, check=False)

    def restore_webui_data(self, directory: Path, data: Path) -> None:
        """Put `data` (a checked backup's) into the open-webui volume, with the stack stopped: a one-off container of the
        same image mounts the volume and the backup, and swaps the volume's contents."""
        c = self._compose(directory)
        if c.running():
            raise OrchError(f"the stack in {directory} is running: stop it first with orch down --dir {directory}, then restore")
        c.run("run", "--rm", "--no-deps", "-T", "--entrypoint", "sh", "-v", f"{data}:/orch-restore:ro", "open-webui", "-c",
              f"find {WEBUI_DATA} -mindepth 1 -delete && cp -a /orch-restore/. {WEBUI_DATA}/")


def _ports_free(plan: StackPlan, held: set) -> None:
    if plan.webui and "open-webui" not in held:
        preflight.port_free(plan.bind, plan.port, "Open WebUI")
    if plan.ollama_url is None and "ollama" not in held:
        preflight.port_free(plan.ollama_bind, plan.ollama_port, "Ollama")


