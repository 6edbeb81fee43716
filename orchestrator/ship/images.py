"""`orch images build`: the Ollama and Open WebUI images made on this machine, where Docker Hub and GHCR are out of reach.

Nothing is pulled from a registry. The base is Debian bookworm, made by
debootstrap from the host's own Debian mirror and imported; Ollama is the build
`orch install-ollama` made (from the Go module proxy and PyPI); Open WebUI is
pip-installed at its pin from the host's package index, trusting the host's
extra CA certificates (a TLS-intercepting proxy works). The images keep the
official ones' contract (ports 11434 and 8080, /root/.ollama,
/app/backend/data, /health, root as the user), so a volume made by one works
with the other, and are tagged orch.local/NAME:VERSION, which `orch up` takes
when they are there. Docker's layer cache makes a second build take seconds.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator import paths, settings
from orchestrator.errors import OrchError
from orchestrator.events import SILENT, Reporter

REGISTRY = "orch.local"  # no registry: a name that is only ever local
BASE = f"{REGISTRY}/debian:bookworm"
SERVICES = ("ollama", "open-webui")
LABEL = "org.opencontainers.image.vendor=orch"
CA_DIR = Path("/usr/local/share/ca-certificates")  # Debian's folder for a host's extra CAs
APT_SOURCES = (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))


def tags() -> dict[str, str]:
    """The local tags, the release of each as the stack runs it (Open WebUI's: the pin, or $ORCH_WEBUI_VERSION)."""
    return {"ollama": f"{REGISTRY}/ollama:{settings.OLLAMA_VERSION}", "open-webui": f"{REGISTRY}/open-webui:v{settings.webui_version()}"}


@dataclass(frozen=True)
class ImagePlan:
    services: tuple[str, ...]
    mirror: str  # the Debian mirror debootstrap and apt use
    pip_index: str | None  # the host's package index, when it names one
    ca_files: tuple[Path, ...] = ()  # the host's extra CAs, trusted inside for apt and pip
    cuda: bool = False
    preinstall: tuple[str, ...] = ()  # pip requirements installed before Open WebUI (ORCH_WEBUI_PREINSTALL)
    tags: dict = field(default_factory=tags)


def plan(services: list[str] | None = None, *, cuda: bool = False) -> ImagePlan:
    """What to build, with the host's mirror, index and CAs."""
    wanted = tuple(services or SERVICES)
    for s in wanted:
        if s not in SERVICES:
            raise OrchError(f"no image named {s!r}: orch images build makes {' and '.join(SERVICES)}")
    index = settings.get("PIP_INDEX_URL") or None
    return ImagePlan(wanted, debian_mirror(), index, tuple(sorted(CA_DIR.glob("*.crt"))) if CA_DIR.is_dir() else (), cuda,
                     tuple(settings.webui_preinstall()))


def debian_mirror() -> str:
    """The host's Debian mirror (its apt sources), else deb.debian.org."""
    for source in APT_SOURCES:
        try:
            text = source.read_text()
        except OSError:
            continue
        found = re.search(r"^URIs:\s*(\S+/debian)\s*$", text, re.M) or re.search(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+/debian)\s+bookworm\b", text, re.M)
        if found:
            return found[1]
    return "http://deb.debian.org/debian"


def ollama_dockerfile() -> str:
    return "\n".join([
        f"FROM {BASE}",
        "RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 ca-certificates && rm -rf /var/lib/apt/lists/*",
        "COPY ollama/ /usr/",  # Ollama's own layout: /usr/bin/ollama, /usr/lib/ollama/llama-server
        "ENV OLLAMA_HOST=0.0.0.0:11434",
        "EXPOSE 11434",
        'ENTRYPOINT ["/usr/bin/ollama"]',
        'CMD ["serve"]', ""])


def webui_dockerfile(p: ImagePlan) -> str:
    trust = ["COPY ca/ /usr/local/share/ca-certificates/", "RUN update-ca-certificates"] if p.ca_files else []
    pip = "/app/venv/bin/pip install --no-cache-dir --disable-pip-version-check"
    return "\n".join([
        f"FROM {BASE}",
        # ca-certificates rebuilds the CA bundle when it installs: the host's CAs go in after it, not before
        "RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates curl "
        "&& rm -rf /var/lib/apt/lists/*",
        *trust,
        "ARG PIP_INDEX_URL",
        "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt",
        "RUN python3 -m venv /app/venv",
        *[f"RUN {pip} '{r}'" for r in p.preinstall],
        f"RUN {pip} 'open-webui=={settings.webui_version()}'",
        "ENV PATH=/app/venv/bin:$PATH DATA_DIR=/app/backend/data PORT=8080",
        "WORKDIR /app/backend",
        "EXPOSE 8080",
        'CMD ["open-webui", "serve", "--host", "0.0.0.0", "--port", "8080"]', ""])


def build(p: ImagePlan, docker: str, *, reporter: Reporter = SILENT) -> dict[str, str]:
    """Build what the plan names (the base first, once); the tags made."""
    made = {}
    base(p, docker, reporter)
    with tempfile.TemporaryDirectory(prefix="orch-images-") as tmp:
        for service in p.services:
            context = Path(tmp) / service
            context.mkdir()
            if service == "ollama":
                _ollama_context(context, p, reporter)
                text = ollama_dockerfile()
            else:
                if p.ca_files:
                    (context / "ca").mkdir()
                    for ca in p.ca_files:
                        shutil.copy2(ca, context / "ca" / ca.name)
                text = webui_dockerfile(p)
            (context / "Dockerfile").write_text(text)
            args = ["--build-arg", f"PIP_INDEX_URL={p.pip_index}"] if service == "open-webui" and p.pip_index else []
            _docker_build(docker, context, p.tags[service], args, f"image {p.tags[service]}", reporter)
            made[service] = p.tags[service]
    return made


def base(p: ImagePlan, docker: str, reporter: Reporter) -> None:
    """orch.local/debian:bookworm, made once: debootstrap's minbase from the host's mirror, imported."""
    if present(docker, BASE):
        return
    if not shutil.which("debootstrap"):
        raise OrchError("orch images build needs debootstrap for its Debian base: apt-get install debootstrap, then run it again")
    cache = paths.cache_home() / "images"
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        with reporter.task(f"debootstrap bookworm from {p.mirror}", total=None):
            run = subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs), p.mirror], capture_output=True, text=True)
        if run.returncode != 0:
            raise OrchError(f"debootstrap could not make the Debian base from {p.mirror} ({_last(run.stderr or run.stdout)}): "
                            "check the mirror in /etc/apt/sources.list(.d), then run orch images build again")
        with reporter.task(f"import {BASE}", total=None):
            tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
            imported = subprocess.run([docker, "import", "--change", f"LABEL {LABEL}", "-", BASE], stdin=tar.stdout,
                                      capture_output=True, text=True)
            tar.stdout.close()
            tar.wait()
        if imported.returncode != 0 or tar.returncode != 0:
            raise OrchError(f"docker import of the Debian base failed ({_last(imported.stderr)})")


def _ollama_context(context: Path, p: ImagePlan, reporter: Reporter) -> None:
    from orchestrator.builder import ollama_source

    built = ollama_source.installed(settings.OLLAMA_SOURCE_VERSION)
    if built is None or (p.cuda and not built.home.name.endswith("-cuda")):
        built = ollama_source.install(cuda=p.cuda, reporter=reporter)
    shutil.copytree(built.home / "bin", context / "ollama" / "bin")
    shutil.copytree(built.home / "lib", context / "ollama" / "lib")


def _docker_build(docker: str, context: Path, tag: str, args: list[str], what: str, reporter: Reporter) -> None:
    """docker build, its steps as the bar (the legacy builder: this engine has no buildx), its last lines on failure."""
    steps = len([line for line in (context / "Dockerfile").read_text().splitlines() if line.strip()])
    tail: list[str] = []
    env = settings.child_env(DOCKER_BUILDKIT="0")
    with reporter.task(what, total=steps, unit="steps") as task:
        proc = subprocess.Popen([docker, "build", "--network", "bridge", "--label", LABEL, "-t", tag, *args, str(context)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for line in proc.stdout:
            tail = (tail + [line.rstrip()])[-20:]
            if found := re.match(r"Step (\d+)/(\d+)", line):
                task.update(completed=int(found[1]) - 1, total=int(found[2]))
        proc.wait()
    if proc.returncode != 0:
        raise OrchError(f"building {tag} failed: {_last(chr(10).join(tail))}")


def present(docker: str, tag: str) -> bool:
    return subprocess.run([docker, "image", "inspect", tag], capture_output=True).returncode == 0


def sizes(docker: str, made: dict[str, str]) -> dict[str, int]:
    out = {}
    for service, tag in made.items():
        proc = subprocess.run([docker, "image", "inspect", tag, "--format", "{{json .Size}}"], capture_output=True, text=True)
        out[service] = json.loads(proc.stdout) if proc.returncode == 0 else 0
    return out


def _last(text: str) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"
