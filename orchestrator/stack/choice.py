"""Which runtime runs a stack: the one asked for, else docker where its daemon answers, else native; and the one that started a stack."""

from __future__ import annotations

import shutil
from pathlib import Path

from orchestrator.errors import BadInput, OrchError
from orchestrator.stack.runtime import Runtime, StackRecord


def choose(requested: str | None) -> tuple[Runtime, str]:
    """docker where a daemon answers, else native; an explicit --runtime is taken as given."""
    from orchestrator.stack import preflight

    if requested is not None:
        if requested not in ("docker", "native"):
            raise BadInput(f"--runtime {requested} is not docker or native: pick one")
        return by_name(requested), f"--runtime {requested}"
    docker = shutil.which("docker")
    if docker is None:
        return by_name("native"), "no docker on PATH: running ollama and open-webui as processes"
    try:
        preflight.docker_daemon(docker, timeout=5)
    except OrchError:
        return by_name("native"), "docker is installed but its daemon does not answer: running ollama and open-webui as processes"
    return by_name("docker"), "docker answers: running the compose stack"


def by_name(name: str) -> Runtime:
    if name == "docker":
        from orchestrator.stack.docker import DockerRuntime

        return DockerRuntime()
    if name == "native":
        from orchestrator.stack.native import NativeRuntime

        return NativeRuntime()
    raise OrchError(f"unknown runtime {name!r} in the stack record: run orch up again")


def load(directory: Path) -> tuple[Runtime, StackRecord]:
    """The runtime that started the stack in `directory`, and where its services answer."""
    record = StackRecord.load(directory)
    if record is None:
        raise OrchError(f"no stack in {directory}: run orch up first (or pass --dir)")
    return by_name(record.runtime), record
