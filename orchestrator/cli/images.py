"""orch images build: the stack's images made here, for sites where Docker Hub and GHCR are out of reach."""

from __future__ import annotations

from typing import List, Optional

import typer

from orchestrator.cli import OrchTyper, app, render

images = OrchTyper(help="The stack's Docker images, made on this machine from the package registries (no image is pulled).\n\n"
                   "Examples:\n\n"
                   "  orch images build\n\n"
                   "  orch images build --only open-webui\n\n"
                   "  orch images build --cuda")
app.add_typer(images, name="images")


@images.command("build")
def build_cmd(
    only: Optional[List[str]] = typer.Option(None, "--only", help="ollama or open-webui; repeatable [default: both]."),
    cuda: bool = typer.Option(False, "--cuda", help="Ollama with llama.cpp's CUDA backend (needs nvcc; orch install-ollama --cuda)."),
    as_json: bool = typer.Option(False, "--json", help="Print the tags and sizes as JSON."),
) -> None:
    """Build the Ollama and Open WebUI images from Debian's mirror, the Go module proxy and PyPI, with no registry.

    Ollama is the release orch install-ollama builds, Open WebUI the release orch
    pins; both keep the official images' ports, volumes and health checks, so
    `orch up --runtime docker` runs them as it would the official ones: it takes
    them whenever they are there. The host's PIP_INDEX_URL and extra CA
    certificates (/usr/local/share/ca-certificates) are used inside. A second run
    reuses Docker's cache and takes seconds.

    Example: orch images build && orch up --runtime docker --offline
    """
    from orchestrator.ship import images as ship
    from orchestrator.stack import preflight

    docker = preflight.docker_binary()
    preflight.docker_daemon(docker)
    plan = ship.plan(only, cuda=cuda)
    with render.RichReporter(quiet=as_json) as reporter:
        made = ship.build(plan, docker, reporter=reporter)
    sizes = ship.sizes(docker, made)
    if as_json:
        render.print_json({"images": made, "sizes": sizes})
        return
    con = render.console()
    for service, tag in made.items():
        con.print(f"built {tag} ({sizes[service] / 1e9:.1f} GB)", markup=False)
    con.print("orch up --runtime docker now runs these (it takes orch.local images whenever they are there)", markup=False)
