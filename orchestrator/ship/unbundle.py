"""orch bundle install, first half: on the box with no network, the bundle checked whole, then orch installed from it.

Standard library only: the bundle's installer (bootstrap.py, as install.py)
runs this from orch's own wheel before anything is installed. Nothing outside
a private staging folder is written until the box has been judged fit (Python,
glibc, CPU, disk, venv, Docker for images) and every member has been read and
matched against the manifest's sha256: a cut or altered bundle changes nothing.
Then orch goes into a virtualenv of its own from the bundled wheels (pip with
--no-index), and that orch places the rest (`orch bundle place`, ship/place.py).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from orchestrator import archive, paths
from orchestrator.errors import BadInput, OrchError
from orchestrator.events import SILENT, Reporter, Task
from orchestrator.files import nearest_existing, write_text
from orchestrator.ship import target

MANIFEST = "manifest.json"
FORMATS = (1,)
MAX_BUNDLE = 1 << 40  # what a bundle may unpack to: more than any model orch builds, with images
ORCH_MARKER = ".orch-bundle"  # in orch's virtualenv: the sha256 of the orch wheel installed there
OWNER = ".owner"  # in a staging folder: the pid of the install that made it


@dataclass(frozen=True)
class Unpacked:
    staging: Path  # the bundle's members, checked, in a private folder beside orch's data
    venv: Path  # orch's virtualenv
    manifest: dict

    @property
    def orch(self) -> Path:
        return self.venv / "bin" / "orch"


def is_orch_wheel(name: str) -> bool:
    """orch's own wheel among the members (a wheel's name spells the project's `-` as `_`, so `orch-` is orch alone)."""
    return name.startswith("wheels/orch-") and name.endswith(".whl")


def orch_venv(version: str) -> Path:
    return paths.data_home() / f"orch-{version}"


def read_manifest(listing: archive.Listing) -> dict:
    """The manifest, last in the archive: missing when the bundle was cut short."""
    raw = listing.read_small(MANIFEST)
    if raw is None:
        raise BadInput(f"{listing.path} has no manifest.json at its end: it was cut short, or is not an orch bundle; "
                       f"{archive.BUNDLE.retry}")
    try:
        manifest = json.loads(raw)
        if manifest.get("format") not in FORMATS:
            raise ValueError
        target.Box.from_dict(manifest["made_for"])
        for entry in manifest["files"].values():
            if not (isinstance(entry["sha256"], str) and isinstance(entry["size"], int)):
                raise ValueError
        manifest["install"]["orch"]["requirement"]
    except (ValueError, TypeError, KeyError, AttributeError):
        raise BadInput(f"{listing.path} has no manifest orch can read: it is not a bundle this orch wrote; "
                       f"{archive.BUNDLE.retry}") from None
    return manifest


def box_problems(manifest: dict, box: target.Box, *, into: Path, python: str = sys.executable,
                 docker: str | None = None) -> list[str]:
    """Everything this box lacks for the bundle, one line each with what to do: pure but for the free space it reads."""
    found = target.problems(target.Box.from_dict(manifest["made_for"]), box, python_exe=python)
    if importlib.util.find_spec("ensurepip") is None or importlib.util.find_spec("venv") is None:
        found.append(f"{python} cannot make virtualenvs (no ensurepip): install python{box.python}-venv from this box's "
                     "installation media or local mirror")
    if manifest["contents"].get("images") and docker is None:
        found.append("this bundle carries Docker images, and there is no docker on this box: install Docker, or use a bundle "
                     "made without --docker (the native runtime)")
    unpacked = sum(f["size"] for f in manifest["files"].values())
    needed = unpacked + int(manifest.get("installed_bytes", 0))
    free = shutil.disk_usage(nearest_existing(into)).free
    if free < needed:
        found.append(f"installing this bundle takes about {needed / 1e9:.1f} GB under {into}, and {free / 1e9:.1f} GB is free: "
                     "free some space, or set XDG_DATA_HOME to a bigger disk")
    return found


def install(bundle: Path, reporter: Reporter = SILENT, *, python: str = sys.executable) -> Unpacked:
    """Judge the box and the whole bundle, unpack it into a private folder, and install orch from it."""
    data = paths.data_home()
    with archive.open_checked(Path(bundle), data, limit=MAX_BUNDLE, kind=archive.BUNDLE) as listing:
        manifest = read_manifest(listing)
        problems = box_problems(manifest, target.this_box(), into=data, python=python, docker=shutil.which("docker"))
        if problems:
            raise BadInput(f"{bundle} cannot be installed on this box: {'; '.join(problems)}")
        files = manifest["files"]
        present = {name: m.size for name, m in listing.files.items() if name != MANIFEST}
        if set(present) != set(files) or any(present[n] != files[n]["size"] for n in files):
            odd = sorted(set(present) ^ set(files)) or sorted(n for n in files if present[n] != files[n]["size"])
            raise BadInput(f"{bundle} does not hold what its manifest lists ({', '.join(odd[:3])}): it was altered or cut; "
                           f"{archive.BUNDLE.retry}")
        data.mkdir(parents=True, exist_ok=True)  # only now: a bundle refused above leaves no trace
        clear_stale(data, reporter)
        staging = Path(tempfile.mkdtemp(prefix=".bundle-", dir=data))
        try:
            (staging / OWNER).write_text(f"{os.getpid()}\n")
            with reporter.task(f"checking {Path(bundle).name}", sum(f["size"] for f in files.values())) as task:
                for name in present:  # in the archive's order: one pass through the file
                    entry = files[name]
                    if listing.extract(name, staging, task.advance) != entry["sha256"]:
                        raise BadInput(f"{bundle}: {name} does not match its sha256 in the manifest: it was altered; "
                                       f"{archive.BUNDLE.retry}")
            write_text(staging / MANIFEST, json.dumps(manifest))
            venv = install_orch(staging, manifest, python, reporter)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return Unpacked(staging, venv, manifest)


def clear_stale(data: Path, reporter: Reporter) -> None:
    """Staging folders an install killed outright (SIGKILL, a reboot) left behind: their owner is gone."""
    for folder in data.glob(".bundle-*"):
        try:
            owner = int((folder / OWNER).read_text())
            os.kill(owner, 0)
            continue  # another install, still running
        except (OSError, ValueError):
            pass
        shutil.rmtree(folder, ignore_errors=True)
        reporter.note(f"removed {folder}, left by an install that was stopped")


def install_orch(staging: Path, manifest: dict, python: str, reporter: Reporter) -> Path:
    """orch in a virtualenv of its own, from the bundle's wheels alone (pip never reaches an index); kept when it already
    holds this bundle's orch wheel."""
    wanted = manifest["install"]["orch"]
    wheel = next(n for n in manifest["files"] if is_orch_wheel(n))
    digest = manifest["files"][wheel]["sha256"]
    venv = orch_venv(wanted["requirement"].split("==", 1)[1])
    marker = venv / ORCH_MARKER
    if marker.is_file() and marker.read_text().strip() == digest and (venv / "bin" / "orch").is_file():
        reporter.note(f"orch from this bundle is already installed in {venv}")
        return venv
    log = staging / "pip-orch.log"
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "--no-index",
           "--find-links", str(staging / "wheels"), "--constraint", str(staging / wanted["constraints"])]
    with reporter.task(f"installing orch into {venv} (from the bundle's wheels)", None), open(log, "ab") as out:
        if not (venv / "bin" / "python").is_file():
            subprocess.run([python, "-m", "venv", str(venv)], check=True, stdout=out, stderr=subprocess.STDOUT)
        steps = [[*pip, "--force-reinstall", "--no-deps", str(staging / wheel)]] if (venv / "bin" / "orch").is_file() else []
        for step in [*steps, [*pip, str(staging / wheel)]]:
            if subprocess.run(step, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
                raise OrchError(f"pip could not install orch from the bundle's wheels into {venv}: see {log}")
    write_text(marker, digest + "\n")
    return venv


def place_command(unpacked: Unpacked) -> list[str]:
    """The installed orch places the rest: Ollama, llama.cpp, the builds, Open WebUI, the images."""
    return [str(unpacked.orch), "bundle", "place", str(unpacked.staging)]


class Printed(Reporter):
    """Plain lines on stderr, for the installer, which runs before Rich is installed."""

    def task(self, description: str, total: float | None = None, unit: str = "bytes") -> Task:
        print(f"{description}{f' ({total / 1e9:.2f} GB)' if total and unit == 'bytes' else ''} ...", file=sys.stderr, flush=True)
        return Task()

    def note(self, text: str, level: str = "info") -> None:
        print(f"{'warning: ' if level == 'warning' else ''}{text}", file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    """The installer's entry: `python3 - BUNDLE` (install.py), with no orch on the box yet."""
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: tar -xOf BUNDLE install.py | python3 - BUNDLE\n"
              "Checks the whole bundle, installs orch, Ollama, Open WebUI and the models from it, and prints the command "
              "that starts the chat. Nothing reaches the network.", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    try:
        unpacked = install(Path(argv[0]).expanduser().absolute(), Printed())
    except OrchError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("stopped: nothing was installed but what the lines above say", file=sys.stderr)
        return 130
    return subprocess.run(place_command(unpacked)).returncode
