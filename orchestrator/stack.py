"""`orch up`: choose the runtime, start the stack (docker compose, or native.py's processes), then register and probe.

Also the Docker side of `down`, `status` and `logs`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from orchestrator import compose, paths, preflight
from orchestrator.errors import OrchError

PROJECT = "orch"


def detect_gpu() -> tuple[bool, str]:
    """NVIDIA through nvidia-smi; the reason is shown so the user knows which was chosen and why."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False, "no nvidia-smi on PATH: CPU only (pass --gpu to reserve NVIDIA GPUs anyway)"
    proc = subprocess.run([smi, "-L"], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    gpus = [ln for ln in proc.stdout.splitlines() if ln.startswith("GPU ")]
    if proc.returncode != 0 or not gpus:
        return False, "nvidia-smi found no GPU: CPU only"
    return True, f"{len(gpus)} NVIDIA GPU(s) found by nvidia-smi: reserved for Ollama (pass --no-gpu to skip)"


def validate(doc: dict) -> None:
    """Check the rendered document against the vendored Compose Specification schema."""
    import jsonschema

    schema = json.loads((paths.resource_dir("compose", "compose_files") / "compose-spec.json").read_text())
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        where = ".".join(str(p) for p in e.path) or "the document"
        raise OrchError(f"the rendered compose file is invalid at {where}: {e.message}: report this as an orch bug")


def built_models(builds: Path | None = None) -> list[tuple[Path, str]]:
    """(Modelfile, Ollama name) for every build under the data directory."""
    from orchestrator.register import names_in_build

    root = builds or paths.data_home() / "builds"
    found = []
    for record in sorted(root.glob("*/build.json")) if root.is_dir() else []:
        try:
            found += [(mf, name) for mf, name in names_in_build(record.parent) if mf.is_file()]
        except (OrchError, KeyError, ValueError):
            continue
    return found


@dataclass
class Docker:
    """`docker compose` for the stack directory."""

    docker: str
    directory: Path

    def compose(self, *args: str, capture: bool = True, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [self.docker, "compose", "--project-name", PROJECT, "--project-directory", str(self.directory),
               "-f", str(self.directory / "compose.yaml"), *args]
        proc = subprocess.run(cmd, capture_output=capture, text=True, stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            why = preflight.first_line(proc.stderr or "") if capture else f"exit {proc.returncode}"
            raise OrchError(f"docker compose {args[0]} failed ({why}): see docker compose logs in {self.directory}")
        return proc

    def running(self) -> list[dict]:
        proc = self.compose("ps", "--format", "json", check=False)
        if proc.returncode != 0 or not proc.stdout.strip():
            return []
        text = proc.stdout.strip()  # one JSON array, or one object a line, depending on the compose version
        return json.loads(text) if text.startswith("[") else [json.loads(line) for line in text.splitlines() if line.strip()]

    def wait_healthy(self, services: list[str], timeout: float, progress=None) -> None:
        task = progress.add_task("waiting for the stack", total=None) if progress is not None else None
        deadline = time.monotonic() + timeout
        while True:
            states = {r.get("Service"): (r.get("Health") or r.get("State") or "") for r in self.running()}
            if task is not None:
                progress.update(task, description="waiting: " + ", ".join(f"{s} {states.get(s, 'starting')}" for s in services))
            if all(states.get(s) == "healthy" for s in services):
                return
            bad = [s for s in services if states.get(s) in ("unhealthy", "exited", "dead")]
            if bad:
                raise OrchError(f"{', '.join(bad)} did not come up healthy: orch logs {bad[0]}")
            if time.monotonic() > deadline:
                raise OrchError(f"the stack was not healthy within {timeout:g} s ({states}): orch logs, then orch up again")
            time.sleep(2)


def check(plan: compose.StackPlan) -> dict:
    """Render and validate; nothing is started or written. The compose document for `plan`."""
    compose.validate_port(plan.port, "--port")
    compose.validate_port(plan.ollama_port, "--ollama-port")
    doc = compose.render(plan)
    validate(doc)
    return doc


def preflight_docker(plan: compose.StackPlan) -> Docker:
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
    runner = Docker(docker, plan.directory)
    if not fresh:
        _ports_free(plan, held={r.get("Service") for r in runner.running()})
    preflight.disk(Path(info["root"]) if info["root"] else plan.directory)
    return runner


def _ports_free(plan: compose.StackPlan, held: set) -> None:
    if "open-webui" not in held:
        preflight.port_free(plan.bind, plan.port, "Open WebUI")
    if plan.ollama_url is None and "ollama" not in held:
        preflight.port_free(plan.ollama_bind, plan.ollama_port, "Ollama")


def choose_runtime(requested: str | None) -> tuple[str, str]:
    """docker where a daemon answers, else native; an explicit --runtime is taken as given."""
    if requested is not None:
        if requested not in ("docker", "native"):
            raise OrchError(f"--runtime {requested} is not docker or native: pick one")
        return requested, f"--runtime {requested}"
    docker = shutil.which("docker")
    if docker is None:
        return "native", "no docker on PATH: running ollama and open-webui as processes"
    try:
        preflight.docker_daemon(docker, timeout=5)
    except OrchError:
        return "native", "docker is installed but its daemon does not answer: running ollama and open-webui as processes"
    return "docker", "docker answers: running the compose stack"


def runtime_of(directory: Path) -> str:
    marker = directory / "runtime"
    if not marker.is_file():
        raise OrchError(f"no stack in {directory}: run orch up first (or pass --dir)")
    return marker.read_text().strip()


def up(plan: compose.StackPlan, runner: Docker | None = None, *, runtime: str = "docker", wait: float = 600, progress=None) -> dict:
    """Start the stack and return what the user needs: URLs, credentials (the first time), registrations, health."""
    from orchestrator import health, native, register
    from orchestrator.state import write_text

    check(plan)
    if runtime == "docker":
        runner = runner or preflight_docker(plan)
        written = compose.write_stack(plan)
        env_path, created, changed = written.env, written.created_secrets, written.changed
        runner.compose("up", "-d", "--remove-orphans")
        runner.wait_healthy(["open-webui"] + ([] if plan.ollama_url else ["ollama"]), wait, progress)
    else:
        env_path, created, changed = native.up(plan, wait=wait, progress=progress)
    write_text(plan.directory / "runtime", runtime + "\n")
    ollama = plan.ollama_url or f"http://127.0.0.1:{plan.ollama_port}"
    import httpx

    try:
        have = {m["name"] for m in httpx.get(f"{ollama}/api/tags", timeout=10).json().get("models", [])}
    except (httpx.HTTPError, ValueError, KeyError, AttributeError):
        have = set()  # registration below reports an unreachable server in its own words
    registered = [register.register(mf, name, ollama, progress=progress).as_dict()
                  for mf, name in built_models() if name not in have]
    report = health.probe(health.Probe(ollama, model=plan.default_model, webui=plan.local_webui_url))
    env = compose.read_env(env_path)
    return {"runtime": runtime, "env": env_path, "registered": registered, "health": report,
            "urls": {"chat": plan.local_webui_url, "ollama": ollama, "openai": f"{ollama}/v1"},
            "admin": {"email": env.get("WEBUI_ADMIN_EMAIL"), "password": env.get("WEBUI_ADMIN_PASSWORD") if created else None},
            "first_start_only": [k for k in changed if k in compose.FIRST_START_ONLY]}


def ollama_url_of(directory: Path) -> str:
    """Where this host reaches the stack's Ollama: its published port, or the --ollama-url it was given."""
    import yaml

    if runtime_of(directory) == "native":
        settings = json.loads((directory / "settings.json").read_text())
        return settings["OLLAMA_BASE_URL"]
    doc = yaml.safe_load((directory / "compose.yaml").read_text())
    ollama = doc["services"].get("ollama")
    if ollama is None:
        url = doc["services"]["open-webui"]["environment"]["OLLAMA_BASE_URL"]
        return url.replace("host.docker.internal", "127.0.0.1")
    host_port = ollama["ports"][0].rsplit(":", 2)[-2]
    return f"http://127.0.0.1:{host_port}"
