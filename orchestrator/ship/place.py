"""orch bundle install, second half, run by the orch the bundle just installed: each part moved from the checked staging
folder to where orch looks for it, the same places `orch install-ollama`, `orch build` and `orch up` use.

A part already there is kept (an Ollama or a llama.cpp tree of the same release, a build of the same name): nothing a
user has is replaced. Open WebUI goes into its virtualenv from the bundled wheels, with pip kept off the network.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator import paths
from orchestrator.builder import ollama_source
from orchestrator.builder.llamacpp import provision, runtime, tools
from orchestrator.errors import OrchError
from orchestrator.events import SILENT, Reporter
from orchestrator.ship.unbundle import MANIFEST
from orchestrator.webui import install as webui_install


@dataclass(frozen=True)
class Placed:
    ollama: Path
    llama_cpp: Path | None
    models: list[str]  # the Ollama names orch up registers
    kept: list[str] = field(default_factory=list)  # what was there already and stayed as it was
    webui: Path | None = None
    images: dict = field(default_factory=dict)

    def command(self, orch: Path) -> str:
        runtime = "docker" if self.images else "native"
        model = f" --model {self.models[0]}" if self.models else ""
        return f"{orch} up --runtime {runtime} --offline{model}"


def _move(source: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(source, dest)


def place(staging: Path, reporter: Reporter = SILENT) -> Placed:
    """Move every part into place, then remove the staging folder (also when a part fails: install again to retry)."""
    try:
        return _place(staging, json.loads((staging / MANIFEST).read_text()), reporter)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _place(staging: Path, manifest: dict, reporter: Reporter) -> Placed:
    contents, kept = manifest["contents"], []
    ollama = ollama_source.Installed(contents["ollama"]["version"], ollama_source.home(contents["ollama"]["version"],
                                                                                        cuda=contents["ollama"]["cuda"]))
    if ollama.complete:
        kept.append(f"Ollama {ollama.version} in {ollama.home}")
    else:
        _move(staging / "ollama" / contents["ollama"]["folder"], ollama.home)
    reporter.note(f"Ollama {ollama.version}: {ollama.binary}")

    llama_root = None
    if (staging / "llama.cpp" / "tree").is_dir():
        llama_root = provision.cache_dir()
        if provision.complete(llama_root):
            kept.append(f"llama.cpp in {llama_root}")
        else:
            _move(staging / "llama.cpp" / "tree", llama_root)
        placed = provision.provision()  # the tree just placed (never $ORCH_LLAMA_CPP's)
        home = tools.home_for(placed)
        if not all((home / p).is_file() for p in tools.PROGRAMS):
            _move(staging / "llama.cpp" / "tools", home)
        if not runtime.complete(runtime.home_for(placed)):
            _move(staging / "llama.cpp" / "runtime", runtime.home_for(placed))
        reporter.note(f"llama.cpp: {placed.version}, its converter, libraries and programs in {llama_root.parent}")

    models = []
    for model in contents["models"]:
        dest = paths.default_build_dir(model["build"])
        if (dest / "build.json").is_file():
            kept.append(f"the build {model['build']} in {dest} (the bundle's was not put over it)")
        else:
            _move(staging / "builds" / model["build"], dest)
        models += model["models"]
        reporter.note(f"build {model['build']}: {', '.join(model['models'])} (orch up registers them with Ollama)")

    webui = None
    wanted = manifest["install"].get("open_webui")
    if wanted and any(n.startswith("wheels/open_webui-") for n in manifest["files"]):
        package = wanted["package"]
        venv = webui_install.default_venv(package.split("==", 1)[1])
        steps = webui_install.offline_steps(wanted["requirements"], staging / "wheels", staging / wanted["constraints"])
        webui = webui_install.ensure(venv, package, steps, reporter)

    images = {}
    if contents.get("images"):
        docker = shutil.which("docker")
        if docker is None:
            raise OrchError("this bundle carries Docker images, and there is no docker on this box: install Docker, then install "
                            "the bundle again")
        for service, tag in contents["images"].items():
            with reporter.task(f"docker load {tag}", None):
                if subprocess.run([docker, "load", "-i", str(staging / "images" / f"{service}.tar")], capture_output=True).returncode:
                    raise OrchError(f"docker load of {tag} failed: is the Docker daemon running? (docker info)")
            images[service] = tag
    return Placed(ollama.binary, llama_root, models, kept, webui, images)
