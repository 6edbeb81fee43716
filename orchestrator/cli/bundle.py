"""orch bundle: one file that carries orch, Ollama, Open WebUI and the builds to a box with no network."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import List, Optional

import typer

from orchestrator.cli import OrchTyper, app, render

bundle = OrchTyper(help="Carry everything to a box with no network in one file: orch and its wheels, Ollama, llama.cpp, Open "
                        "WebUI, your builds (and with --docker the images).\n\n"
                        "A box with mirrors (PIP_INDEX_URL, GOPROXY, HF_ENDPOINT, orch up --registry) needs no bundle.\n\n"
                        "Examples:\n\n"
                        "  orch bundle create orch-bundle.tar --model tiny\n\n"
                        "  orch bundle create orch-bundle.tar --model baichuan2-7b-chat --docker\n\n"
                        "  tar -xOf orch-bundle.tar install.py | python3 - orch-bundle.tar   (on the box, with no orch yet)\n\n"
                        "  orch bundle install orch-bundle.tar   (on a box that has orch)")
app.add_typer(bundle, name="bundle")


@bundle.command("create")
def create_cmd(
    out: Path = typer.Argument(..., help="The bundle file to write, e.g. orch-bundle.tar."),
    model: Optional[List[str]] = typer.Option(None, "--model", help="A build to carry: its name (orch build's) or directory; repeatable."),
    docker: bool = typer.Option(False, "--docker", help="Also carry the images orch images build made (docker save), for the docker runtime."),
    cuda: bool = typer.Option(False, "--cuda", help="Carry the CUDA build of Ollama (orch install-ollama --cuda) and PyPI's CUDA torch."),
    as_json: bool = typer.Option(False, "--json", help="Print what the bundle holds as JSON."),
) -> None:
    """Write one archive with everything a box with no network needs (made on a connected machine like the box).

    It holds orch and every wheel it needs for this Python and platform, the
    Ollama orch install-ollama built, llama.cpp's converter and what orch
    compiled of it (libraries and programs, without the AMX path), Open
    WebUI's wheels, and each --model build; a manifest lists every member's
    sha256. The box needs the same Python version, a glibc as new, and a CPU
    with the same vector extensions (the llama.cpp in it is compiled for this
    one). Ctrl-C, then the same command, goes on where it stopped (OUT.parts/).

    Example: orch bundle create orch-bundle.tar --model tiny
    """
    from orchestrator.ship import bundle as ship

    plan = ship.plan(out, model or [], cuda=cuda, docker=docker)
    with render.RichReporter(quiet=as_json) as reporter:
        made = ship.create(plan, reporter=reporter)
    if as_json:
        render.print_json({"path": str(made.path), "bytes": made.size, "sha256": made.sha256, "contents": made.contents,
                           "sizes": made.sizes, "seconds": round(made.seconds, 1)})
        return
    con = render.console()
    con.print(f"wrote {made.path} ({made.size / 1e9:.2f} GB in {made.seconds:.0f} s), sha256 {made.sha256}", soft_wrap=True, markup=False)
    for part, size in made.sizes.items():
        if size:
            con.print(f"  {part:<10} {size / 1e9:6.2f} GB", markup=False)
    c = made.contents
    con.print(f"  orch {c['orch']}, Ollama {c['ollama']['version']}{' (CUDA)' if c['ollama']['cuda'] else ''}, "
              f"Open WebUI {c['open_webui']}, models: {', '.join(n for m in c['models'] for n in m['models']) or 'none'}",
              soft_wrap=True, markup=False)
    con.print(f"On the box (no orch needed; compare sha256sum first):\n  tar -xOf {made.path.name} install.py | python3 - {made.path.name}",
              soft_wrap=True, markup=False)


@bundle.command("install")
def install_cmd(
    path: Path = typer.Argument(..., help="The bundle orch bundle create wrote."),
) -> None:
    """Check a bundle whole, then install orch, Ollama, llama.cpp, Open WebUI and its builds from it, with no network.

    A cut or altered bundle, or a box it cannot run on (Python, glibc, CPU,
    disk, Docker for images), is refused in one line before anything is
    installed. orch goes into its own virtualenv in orch's data directory
    ($XDG_DATA_HOME/orch, else ~/.local/share/orch); the command that starts
    the chat is printed at the end. On a box with no orch yet, run the
    bundle's own installer instead: tar -xOf BUNDLE install.py | python3 - BUNDLE

    Example: orch bundle install orch-bundle.tar
    """
    from orchestrator.ship import unbundle

    with render.RichReporter() as reporter:
        unpacked = unbundle.install(path.expanduser().absolute(), reporter)
    done = subprocess.run(unbundle.place_command(unpacked))
    raise typer.Exit(done.returncode)


@bundle.command("place", hidden=True)
def place_cmd(staging: Path = typer.Argument(...)) -> None:
    """The second half of an install, run by the orch the bundle installed (ship/place.py)."""
    import sys

    from orchestrator.ship import place

    with render.RichReporter() as reporter:
        placed = place.place(staging, reporter)
    con = render.console()
    for what in placed.kept:
        con.print(f"kept {what}", soft_wrap=True, markup=False)
    orch = Path(sys.executable).with_name("orch")
    con.print(f"\norch is in {orch} (add {orch.parent} to PATH to type just orch)", soft_wrap=True, markup=False)
    con.print(f"Start the chat (nothing leaves this box):\n  {placed.command(orch)}", soft_wrap=True, markup=False)
