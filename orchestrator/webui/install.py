"""Open WebUI in a virtualenv of its own (as pipx would), so its many dependencies never meet orch's: from the package
index, or from the wheels a bundle carried to a box with no network.

The native runtime installs the pinned release on first use; `orch bundle install` installs the same steps from the
bundle's wheels, with pip kept off the network (--no-index). A virtualenv counts as installed only when its marker
names the package it holds, written last: a cut install is made again, never run.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from orchestrator import paths, settings
from orchestrator.errors import OrchError
from orchestrator.events import Reporter

MARKER = ".orch-installed"  # in a virtualenv orch installed Open WebUI into: the package it holds


def default_venv(version: str) -> Path:
    """One virtualenv per Open WebUI release, so that the one before an upgrade is still there to roll back to."""
    return settings.webui_venv() or paths.data_home() / f"open-webui-venv-{version}"


def holds(venv: Path) -> str | None:
    """The package orch installed into `venv` (None when it installed nothing there, or did not finish)."""
    try:
        return (venv / MARKER).read_text().strip() if (venv / MARKER).is_file() else None
    except OSError:
        return None


@dataclass(frozen=True)
class PipStep:
    args: tuple[str, ...]  # what follows `pip install`
    optional: str | None = None  # when set, a failure is this note and the install goes on


def install_steps(package: str, *, gpu: bool) -> list[PipStep]:
    """What goes into Open WebUI's virtualenv, in order. On a box with no GPU, torch comes first from a CPU-only index
    (not PyPI's CUDA build, whose nvidia-* packages are 2.7 GB installed), so that Open WebUI's own requirement finds it there and pip installs
    no second one; where that index does not answer, PyPI's torch comes with Open WebUI, as before."""
    if preinstall := settings.webui_preinstall():
        return [PipStep((r,)) for r in preinstall] + [PipStep((package,))]
    index = settings.torch_cpu_index()
    if gpu or index is None:
        return [PipStep((package,))]
    return [PipStep(("torch", "--index-url", index, "--timeout", "20", "--retries", "1"),
                    optional=f"the CPU-only torch from {index} could not be installed (see the log): Open WebUI gets PyPI's, a "
                             f"CUDA build with 2.7 GB of nvidia-* packages; set {settings.TORCH_CPU_INDEX_ENV} to a mirror of that index"),
            PipStep((package,))]


def offline_steps(requirements: list[str], wheels: Path, constraints: Path) -> list[PipStep]:
    """The same steps from a folder of wheels, each pinned by the constraints the bundle resolved: pip reaches nothing."""
    return [PipStep((r, "--no-index", "--find-links", str(wheels), "--constraint", str(constraints))) for r in requirements]


def ensure(venv: Path, package: str, steps: list[PipStep], reporter: Reporter) -> Path:
    """The open-webui executable in `venv`, installed by `steps` unless the venv already holds `package`."""
    exe = venv / "bin" / "open-webui"
    if exe.is_file() and holds(venv) == package:
        return exe
    reporter.note(f"installing {package} into {venv} (once; several minutes)")
    if not (venv / "bin" / "python").is_file():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    run_pip(venv, steps, reporter)
    (venv / MARKER).write_text(package + "\n")
    return exe


def run_pip(venv: Path, steps: list[PipStep], reporter: Reporter) -> None:
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    log = venv / "install.log"
    with open(log, "ab") as out:
        for step in steps:
            if subprocess.run([*pip, *step.args], stdout=out, stderr=subprocess.STDOUT).returncode == 0:
                continue
            if step.optional is None:
                raise OrchError(f"pip could not install {step.args[0]} into {venv}: see {log} "
                                "(a PyPI mirror can be set with PIP_INDEX_URL)")
            reporter.note(f"{step.optional} (log: {log})", "warning")
