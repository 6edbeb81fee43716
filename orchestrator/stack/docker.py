"""The docker runtime: the rendered compose stack, run with `docker compose`."""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Iterator

from orchestrator.errors import OrchError
from orchestrator.events import Reporter
from orchestrator.stack import backup, compose, preflight
from orchestrator.stack.config import StackPlan, pinned_images
from orchestrator.stack.process import stream
from orchestrator.stack.runtime import ServiceState, Started, save_webui_release, webui_release

PROJECT = "orch"
WEBUI_DATA = "/app/backend/data"  # Open WebUI's DATA_DIR in its container: the open-webui volume
SNAPSHOT = "/tmp/orch-backup-webui.db"  # the database's consistent copy, made inside the container
# run by the container's own Python: SQLite's online backup API, so a backup taken while Open WebUI writes is consistent
SNAPSHOT_SCRIPT = ("import sqlite3; s = sqlite3.connect('file:" + WEBUI_DATA + "/webui.db?mode=ro', uri=True, timeout=30); "
                   "d = sqlite3.connect('" + SNAPSHOT + "'); s.backup(d); d.close(); s.close()")
OUT = "/orch-out"  # where a one-off container writes the data it copies out of a stopped stack's volume
# Open WebUI stopped: its files copied whole, the database again through SQLite (it folds in a WAL left by a crash)
COPY_OUT_SCRIPT = (f"set -e; [ -f {WEBUI_DATA}/webui.db ] || exit 0; cp -a {WEBUI_DATA}/. {OUT}/; rm -f {OUT}/webui.db*; "
                   f"python3 -c \"import sqlite3; s = sqlite3.connect('{WEBUI_DATA}/webui.db', timeout=30); "
                   f"d = sqlite3.connect('{OUT}/webui.db'); s.backup(d); d.close(); s.close()\"")
# The volume's contents swapped for a backup's (at /orch-restore), the old ones kept aside until the new are all in;
# a swap killed halfway is put back first. .orch-aside says the old ones are all aside (what is in place is new).
PUT_SCRIPT = """set -e; cd {data}
here() {{ find . -mindepth 1 -maxdepth 1 ! -name .orch-incoming ! -name .orch-previous ! -name .orch-aside "$@"; }}
if [ -d .orch-previous ]; then
  if [ -e .orch-aside ]; then here -exec rm -rf {{}} +; fi
  find .orch-previous -mindepth 1 -maxdepth 1 -exec mv -t . {{}} +; rm -f .orch-aside; rmdir .orch-previous
fi
rm -rf .orch-incoming; mkdir .orch-incoming; cp -a /orch-restore/. .orch-incoming/
mkdir .orch-previous; here -exec mv -t .orch-previous/ {{}} +; touch .orch-aside
find .orch-incoming -mindepth 1 -maxdepth 1 -exec mv -t . {{}} +
rmdir .orch-incoming; rm -f .orch-aside; rm -rf .orch-previous
""".format(data=WEBUI_DATA)


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
        """Every container of the stack as the engine reports it, stopped, crashed and restarting ones too."""
        proc = self.run("ps", "--all", "--format", "json", check=False)
        if proc.returncode != 0 or not proc.stdout.strip():
            return []
        text = proc.stdout.strip()  # one JSON array, or one object a line, depending on the compose version
        return json.loads(text) if text.startswith("[") else [json.loads(line) for line in text.splitlines() if line.strip()]

    def wait_healthy(self, services: list[str], timeout: float, reporter: Reporter) -> None:
        deadline = time.monotonic() + timeout
        with reporter.task("waiting for the stack") as task:
            while True:
                states = {r.get("Service"): state_of(r) for r in self.running()}
                task.update(description="waiting: " + ", ".join(f"{s} {states.get(s, 'starting')}" for s in services))
                if all(states.get(s) == "healthy" for s in services):
                    return
                bad = [s for s in services if states.get(s) in FAILED]
                if bad:
                    raise OrchError(f"{', '.join(f'{s} {states[s]}' for s in bad)}: it did not come up healthy: orch logs {bad[0]}")
                if time.monotonic() > deadline:
                    raise OrchError(f"the stack was not healthy within {timeout:g} s ({states}): orch logs, then orch up again")
                time.sleep(2)


FAILED = ("unhealthy", "exited", "dead", "restarting")  # restarting: it exited, and Docker starts it again (a crash loop)


def state_of(container: dict) -> str:
    """One word for a container: its health while it runs with a health check, else the engine's state."""
    state = (container.get("State") or "unknown").lower()
    return (container.get("Health") or state).lower() if state == "running" else state


def local_images(plan: StackPlan, docker: str, reporter: Reporter) -> StackPlan:
    """The images `orch images build` made, when they are there and no --registry was asked; the choice is said."""
    from orchestrator.ship import images

    if plan.registry is None:
        made, pinned = images.tags(), pinned_images()
        local = {s: made[s] for s in plan.images if plan.images[s] == pinned[s] and images.present(docker, made[s])}
        if local:
            plan = replace(plan, images=plan.images | local)
    origin = {s: "a registry mirror" if plan.registry else ("built here by orch images build" if image.startswith(images.REGISTRY)
                                                              else "Docker Hub" if s == "ollama" else "ghcr.io")
              for s, image in plan.images.items()}
    reporter.note("images: " + "; ".join(f"{plan.images[s]} ({origin[s]})" for s in plan.images
                                           if s == "open-webui" and plan.webui or s == "ollama" and not plan.ollama_url))
    return plan


def running_webui_image(directory: Path) -> str | None:
    """The Open WebUI image the stack last ran healthy (open-webui.json), else the one its compose.yaml names."""
    import yaml

    if (ran := webui_release(directory)) is not None:
        return ran["release"]
    try:
        return yaml.safe_load((directory / "compose.yaml").read_text())["services"]["open-webui"]["image"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None


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
        if plan.gpu and plan.ollama_url is None:
            preflight.nvidia_runtime(info)
        if plan.ollama_url and compose.container_url(plan.ollama_url)[1]:
            preflight.host_ollama_reachable(docker, plan.ollama_url)
        if not fresh:
            _ports_free(plan, held={r.get("Service") for r in Compose(docker, plan.directory).running() if r.get("State") == "running"})
        preflight.disk(Path(info["root"]) if info["root"] else plan.directory)

    def up(self, plan: StackPlan, *, wait: float, reporter: Reporter) -> Started:
        """Render and start the stack. When Open WebUI's image changes, its data is backed up first (from the running
        container), and if the new image does not become healthy, the old one runs again on the data as it was."""
        runner = Compose(preflight.docker_binary(), plan.directory)
        plan = local_images(plan, runner.docker, reporter)
        old_image, new_image = running_webui_image(plan.directory), plan.images["open-webui"] if plan.webui else None
        upgrade = old_image is not None and new_image is not None and old_image != new_image
        taken, why_not = None, "--no-backup" if not plan.backup else "there was no data yet"
        if upgrade and plan.backup:
            with self.webui_data(plan.directory) as data:  # from the running container, or a one-off one when stopped
                if data is not None:
                    taken = backup.before_upgrade(plan.directory, old_image, new_image, reporter, data=data)
        env, created, changed, doc = compose.write_stack(plan)
        runner.run("up", "-d", "--remove-orphans")
        try:
            runner.wait_healthy(list(doc["services"]), wait, reporter)
        except OrchError as e:
            if not upgrade:
                raise
            self._roll_back(plan, old_image, taken, runner, wait, reporter)
            raise backup.rolled_back(new_image, old_image, taken, e, why_not) from None
        if new_image is not None:
            save_webui_release(plan.directory, new_image)
        return Started(env, created, changed)

    def _roll_back(self, plan: StackPlan, old_image: str, taken: Path | None, runner: Compose, wait: float,
                   reporter: Reporter) -> None:
        """The image that ran before, on the data from the backup taken before the change."""
        reporter.note(f"rolling back to {old_image}", level="warning")
        previous = replace(plan, images=plan.images | {"open-webui": old_image})
        compose.write_stack(previous)
        runner.run("stop", "open-webui", check=False)
        if taken is not None:
            backup.restore(taken, plan.directory, put_data=lambda data: self.put_webui_data(plan.directory, data))
        runner.run("up", "-d", "--remove-orphans")
        runner.wait_healthy(["open-webui"], wait, reporter)
        save_webui_release(plan.directory, old_image)

    def down(self, directory: Path, *, volumes: bool = False) -> list[str]:
        self._compose(directory).run("down", *(["--volumes"] if volumes else []))
        return ["the compose stack"]

    def status(self, directory: Path) -> list[ServiceState]:
        return [ServiceState(r.get("Service", "?"), state_of(r),
                             " ".join(x for x in (r.get("Status"), r.get("Image")) if x))
                for r in self._compose(directory).running()]

    def logs(self, directory: Path, services: list[str] | None = None, *, follow: bool = False) -> Iterator[str]:
        yield from stream(self._compose(directory).command("logs", "--tail", "200", *(["--follow"] if follow else []), *(services or [])))

    data_in_stack = False

    def running(self, directory: Path) -> bool:
        return any(state_of(r) not in ("exited", "dead", "created") for r in self._compose(directory).running())

    @contextmanager
    def webui_data(self, directory: Path) -> Iterator[Path | None]:
        """Open WebUI's data copied out of its volume into a private temporary directory of the stack: from the running
        container (the database through SQLite's backup API inside it, the rest with docker compose cp), or, when it
        is stopped, by a one-off container of its image. None when the volume holds no database yet."""
        c = self._compose(directory)
        with tempfile.TemporaryDirectory(dir=directory, prefix=".backup-copy-") as tmp:
            into = Path(tmp) / "data"
            into.mkdir(mode=0o700)
            if "open-webui" in {r.get("Service") for r in c.running() if r.get("State") == "running"}:
                c.run("exec", "-T", "open-webui", "python3", "-c", SNAPSHOT_SCRIPT)
                try:
                    c.run("cp", f"open-webui:{WEBUI_DATA}/.", str(into))
                    for live in into.glob("webui.db*"):  # the live files, possibly mid-write: the snapshot replaces them
                        live.unlink()
                    c.run("cp", f"open-webui:{SNAPSHOT}", str(into / "webui.db"))
                finally:
                    c.run("exec", "-T", "open-webui", "rm", "-f", SNAPSHOT, check=False)
            else:
                c.run("run", "--rm", "--no-deps", "-T", "--entrypoint", "sh", "-v", f"{into}:{OUT}", "open-webui", "-c",
                      COPY_OUT_SCRIPT)
            yield into if (into / "webui.db").is_file() else None

    def put_webui_data(self, directory: Path, data: Path) -> None:
        """Put `data` (a checked backup's) into the open-webui volume, with Open WebUI stopped: a one-off container of
        the same image mounts the volume and the backup, and swaps the volume's contents, the old ones kept aside
        until the new are all in."""
        c = self._compose(directory)
        if "open-webui" in {r.get("Service") for r in c.running() if r.get("State") in ("running", "restarting")}:
            raise OrchError(f"the stack in {directory} is running: stop it first with orch down --dir {directory}, then restore")
        c.run("run", "--rm", "--no-deps", "-T", "--entrypoint", "sh", "-v", f"{data}:/orch-restore:ro", "open-webui", "-c", PUT_SCRIPT)


def _ports_free(plan: StackPlan, held: set) -> None:
    if plan.webui and "open-webui" not in held:
        preflight.port_free(plan.bind, plan.port, "Open WebUI")
    if plan.ollama_url is None and "ollama" not in held:
        preflight.port_free(plan.ollama_bind, plan.ollama_port, "Ollama")


