"""orch bundle create: everything a box with no network needs, in one archive made on a connected machine.

The archive is a plain tar (its members are wheels and GGUFs, which do not
compress), members in this order:
  install.py            the installer, standard library only: `tar -xOf BUNDLE install.py | python3 - BUNDLE`
  wheels/*.whl          orch and every wheel it needs, and Open WebUI's, resolved by pip for this Python and platform
  requirements/*.txt    the exact versions each virtualenv gets (pip constraints)
  ollama/VERSION/       the Ollama orch install-ollama built (bin/ollama, lib/ollama/llama-server, llama-quantize)
  llama.cpp/tree/       the pinned llama.cpp tree (the converter, the bindings), llama.cpp/runtime/ the libraries the
                        bindings load and llama.cpp/tools/ its programs: orch's one compile, checked for the AMX path
  builds/NAME/          each chosen build: build.json, its GGUFs (checked against build.json) and Modelfiles
  images/*.tar          with --docker: `docker save` of the images orch images build made
  manifest.json         last: every member's sha256, size and mode; the versions; the box it was made for
Resumable: the slow parts (wheels, saved images) are kept in OUT.parts/ until the archive is whole, so a create cut
short by Ctrl-C starts again where it stopped; the archive itself appears under its name only when complete.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator import __version__, paths, settings
from orchestrator.builder import ollama_source
from orchestrator.builder.llamacpp import runtime, tools
from orchestrator.errors import BadInput, OrchError
from orchestrator.events import SILENT, Reporter
from orchestrator.files import atomic_path, nearest_existing
from orchestrator.ship import target, unbundle
from orchestrator.webui import install as webui_install

FORMAT = unbundle.FORMATS[-1]
MANIFEST, INSTALLER = unbundle.MANIFEST, "install.py"
REQUIREMENTS = {"orch": "requirements/orch.txt", "open-webui": "requirements/open-webui.txt"}
INSTALLED_PER_WHEEL_BYTE = 1.6  # a virtualenv's size over its wheels' (torch and nvidia-* measured here: 5.6 GB from 3.4 GB)
# ldtilecfg and tilerelease as any x86 assembler encodes them (VEX, map 0F38, opcode 49, ModRM reg 000): code that uses
# AMX tiles must configure them first, so a library without these bytes holds no AMX path
_AMX = re.compile(rb"\xc4[\xe2\xc2\xa2\x82\x62\x42\x22\x02]\x78\x49[\x00-\x07\x40-\x47\x80-\x87\xc0]")


@dataclass(frozen=True)
class BundlePlan:
    out: Path
    builds: tuple[Path, ...]  # build directories orch build wrote
    source: Path  # orch's project tree, which pip makes orch's wheel from
    webui_package: str  # open-webui==VERSION
    webui_steps: tuple[webui_install.PipStep, ...]  # what goes into Open WebUI's virtualenv, in order (as the native runtime does)
    cuda: bool = False
    docker: bool = False
    made_for: target.Box = field(default_factory=target.this_box)

    @property
    def parts(self) -> Path:
        return self.out.with_name(self.out.name + ".parts")


@dataclass(frozen=True)
class Created:
    path: Path
    size: int
    sha256: str
    contents: dict  # what it holds, as the manifest says
    sizes: dict[str, int]  # bytes by part: wheels, ollama, llama.cpp, builds, images
    seconds: float


def orch_source() -> Path:
    """orch's project tree (pyproject.toml beside the package): pip builds orch's own wheel from it."""
    root = Path(__file__).resolve().parents[2]
    project = root / "pyproject.toml"
    if not project.is_file() or 'name = "orch"' not in project.read_text():
        raise OrchError("orch bundle create makes orch's wheel from its project tree, and this orch was installed without one: "
                        "run it from a clone installed with pip install -e .")
    return root


def plan(out: Path, models: list[str], *, cuda: bool = False, docker: bool = False) -> BundlePlan:
    """Check what was asked before anything is fetched: a writable OUT, builds that exist."""
    out = Path(out).expanduser().absolute()
    if out.is_dir():
        raise BadInput(f"{out} is a directory: give the bundle's file name, e.g. {out / 'orch-bundle.tar'}")
    if not out.parent.is_dir():
        raise BadInput(f"{out.parent} does not exist: create it first, or give another path for the bundle")
    builds = []
    for model in models:
        found = paths.build_or_path(Path(model))
        if not (found / "build.json").is_file():
            made = sorted(p.parent.name for p in (paths.data_home() / "builds").glob("*/build.json"))
            raise BadInput(f"{model} is not a build orch made: pass a build's name or directory "
                           f"({'here: ' + ', '.join(made) if made else 'none yet: orch build tiny makes one'})")
        builds.append(found.resolve())
    package = f"open-webui=={settings.webui_version()}"
    steps = tuple(webui_install.install_steps(package, gpu=cuda))
    return BundlePlan(out, tuple(dict.fromkeys(builds)), orch_source(), package, steps, cuda, docker)


# --- wheels -----------------------------------------------------------------------------------------------------------

def _pip(args: list[str], *, log: Path, what: str, reporter: Reporter = SILENT) -> bool:
    with reporter.task(what, None), open(log, "ab") as out:
        out.write(f"\n$ pip {' '.join(args)}\n".encode())
        out.flush()
        done = subprocess.run([sys.executable, "-m", "pip", *args, "--disable-pip-version-check", "--progress-bar", "off"],
                              stdout=out, stderr=subprocess.STDOUT, env=settings.child_env())
    return done.returncode == 0


def has_amx(libraries: list[Path]) -> bool:
    """Whether any of these shared libraries holds AMX tile instructions (llama.cpp's AMX path, which crashes on AMX CPUs
    when GCC < 13 compiled it: builder/llamacpp/cpu.py)."""
    return any(_AMX.search(library.read_bytes()) for library in libraries)


def this_environment() -> list[str]:
    """name==version of every package installed beside orch (none installed from a path or a URL): what the bundle's orch
    gets, so that the box runs the versions this machine runs."""
    pins = {}
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if not name or name == "orch" or dist.read_text("direct_url.json"):
            continue
        pins[name] = f"{name}=={dist.version}"
    return sorted(pins.values())


def _name(text: str) -> str:
    return text.lower().replace("_", "-")


def wheel_name_version(wheel: Path) -> tuple[str, str]:
    name, version = wheel.name.split("-")[:2]
    return _name(name), version


def newest(folder: Path, requirement: str) -> str:
    """`requirement` pinned to the newest version of it in `folder` (what a step that fetched it alone brought)."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    name = _name(Requirement(requirement).name)
    versions = [v for n, v in map(wheel_name_version, folder.glob("*.whl")) if n == name]
    return f"{name}=={max(versions, key=Version)}"


def resolve(requirements: list[str], folder: Path, *, log: Path, reporter: Reporter, constraints: Path | None = None) -> dict[str, str]:
    """What pip installs for `requirements` from `folder` alone (--no-index, a dry run): name -> version. The box's pip
    makes the same choice from the same wheels; a set that cannot install offline fails here, on the connected machine."""
    report = folder.parent / f"{folder.name}-report.json"
    args = ["install", "--dry-run", "--ignore-installed", "--no-index", "--find-links", str(folder), "--report", str(report),
            *(["--constraint", str(constraints)] if constraints else []), *requirements]
    if not _pip(args, log=log, reporter=reporter, what=f"resolving {requirements[-1]} offline"):
        raise OrchError(f"the wheels gathered for {requirements[-1]} do not install offline: see {log}")
    return {_name(i["metadata"]["name"]): i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}


def wheels(p: BundlePlan, reporter: Reporter) -> tuple[dict[str, Path], list[str]]:
    """Every wheel both virtualenvs need, in OUT.parts/ ({archive name: file}), and the requirements Open WebUI's
    virtualenv is installed from. Each set is resolved by pip on its own, then again offline from its wheels alone: the
    bundle carries exactly what the box's pip will install (requirements/*.txt pin it)."""
    parts = p.parts
    sets = {"orch": parts / "sets" / "orch", "open-webui": parts / "sets" / "open-webui"}
    for folder in (*sets.values(), parts / "requirements"):
        folder.mkdir(parents=True, exist_ok=True)
    done = parts / "wheels.json"
    if not done.is_file():
        here = parts / "requirements" / "this-machine.txt"
        here.write_text("\n".join(this_environment()) + "\n")
        _orch_set(p, sets["orch"], here, parts / "pip-orch.log", reporter)
        # the wheels both sets share (torch and the nvidia-* ones: gigabytes) are taken from orch's, not downloaded again
        requirements = _webui_set(p, sets["open-webui"], sets["orch"], parts / "pip-open-webui.log", reporter)
        webui, log = sets["open-webui"], parts / "pip-resolve.log"
        for wheel in webui.glob("*.whl"):  # torch and the nvidia-* wheels, once on the disk (gigabytes)
            twin = sets["orch"] / wheel.name
            if twin.is_file() and twin.stat().st_size == wheel.stat().st_size and not twin.samefile(wheel):
                wheel.unlink()
                os.link(twin, wheel)
        pins = {"orch": resolve([f"orch=={__version__}"], sets["orch"], log=log, reporter=reporter, constraints=here),
                "open-webui": resolve(requirements, webui, log=log, reporter=reporter)}
        for name, resolved in pins.items():
            (parts / REQUIREMENTS[name]).write_text("".join(f"{n}=={v}\n" for n, v in sorted(resolved.items())))
        done.write_text(json.dumps({"pins": pins, "webui_requirements": requirements}))
    else:
        reporter.note(f"reusing the wheels an earlier run gathered in {parts}")
    recorded = json.loads(done.read_text())
    members: dict[str, Path] = {}
    for name, folder in sets.items():
        for wheel in sorted(folder.glob("*.whl")):  # only what the offline resolution takes: no stale or spare wheel
            n, v = wheel_name_version(wheel)
            if recorded["pins"][name].get(n) == v:
                members.setdefault(f"wheels/{wheel.name}", wheel)
    for rel in REQUIREMENTS.values():
        members[rel] = parts / rel
    return members, recorded["webui_requirements"]


def _orch_set(p: BundlePlan, folder: Path, here: Path, log: Path, reporter: Reporter) -> None:
    if not _pip(["wheel", "--prefer-binary", "-w", str(folder), "--find-links", str(folder), "--constraint", str(here),
                 str(p.source)], log=log, reporter=reporter, what="orch's wheels (pip)"):
        raise OrchError(f"pip could not gather orch's wheels: see {log} (a PyPI mirror can be set with PIP_INDEX_URL)")


def _webui_set(p: BundlePlan, folder: Path, shared: Path, log: Path, reporter: Reporter) -> list[str]:
    """Open WebUI's wheels, as the native runtime installs it: the steps before Open WebUI (a CPU torch, the user's
    preinstall) come first and stay as they came, so Open WebUI's own resolution is pinned to them. Returns the
    requirements its virtualenv is installed from."""
    pinned = []
    for step in p.webui_steps[:-1]:
        if _pip(["wheel", "--prefer-binary", "-w", str(folder), "--find-links", str(folder), "--find-links", str(shared), *step.args], log=log,
                reporter=reporter, what=f"Open WebUI's wheels: {step.args[0]} (pip)"):
            pinned.append(newest(folder, step.args[0]))
        elif step.optional is None:
            raise OrchError(f"pip could not gather {step.args[0]}'s wheels: see {log} (a PyPI mirror can be set with PIP_INDEX_URL)")
        else:
            reporter.note(f"{step.optional} (log: {log})", "warning")
    requirements = [*pinned, p.webui_package]
    if not _pip(["wheel", "--prefer-binary", "-w", str(folder), "--find-links", str(folder), "--find-links", str(shared), *requirements], log=log,
                reporter=reporter, what=f"Open WebUI's wheels: {p.webui_package} (pip)"):
        raise OrchError(f"pip could not gather {p.webui_package}'s wheels: see {log} (a PyPI mirror can be set with PIP_INDEX_URL)")
    return requirements


# --- the rest ---------------------------------------------------------------------------------------------------------

def tree_files(root: Path, prefix: str) -> dict[str, Path]:
    """Every regular file under `root` as archive names under `prefix` (links inside are left out: a bundle holds files)."""
    out = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not (Path(folder) / d).is_symlink())
        for f in sorted(files):
            path = Path(folder) / f
            if path.is_file() and not path.is_symlink():
                out[f"{prefix}/{path.relative_to(root).as_posix()}"] = path
    return out


def ollama_files(p: BundlePlan, reporter: Reporter) -> tuple[dict[str, Path], dict]:
    built = ollama_source.Installed(settings.OLLAMA_SOURCE_VERSION, ollama_source.home(cuda=p.cuda))
    if not built.complete:
        built = ollama_source.install(cuda=p.cuda, reporter=reporter)
    name = built.home.name
    return tree_files(built.home, f"ollama/{name}"), {"version": built.version, "cuda": p.cuda, "folder": name}


def llama_files(reporter: Reporter) -> tuple[dict[str, Path], dict]:
    """The pinned llama.cpp tree (the converter orch build runs, the bindings), and what orch compiled of it: the
    bindings' libraries and the programs (imatrix, quantize, server). None may carry the AMX path."""
    llama = runtime.pinned(reporter)
    compiled = runtime.locate(reporter)
    programs = tools.locate(llama, reporter=reporter)
    libraries = [*(compiled / runtime.PACKAGE / "lib").glob("*.so"), *programs.libraries]
    if has_amx(libraries):
        raise OrchError(f"orch's llama.cpp libraries carry the AMX path, which crashes on AMX CPUs: delete {compiled} and "
                        f"{programs.server.parent}, then create the bundle again (orch compiles them without it)")
    files = (tree_files(llama.root, "llama.cpp/tree") | tree_files(compiled, "llama.cpp/runtime")
             | tree_files(programs.server.parent, "llama.cpp/tools"))
    provenance = json.loads((llama.root / "orch-provenance.json").read_text())
    return files, {"version": provenance["version"], "sdist_sha256": provenance["sdist_sha256"]}


def build_files(build: Path) -> tuple[dict[str, Path], dict, dict[str, str]]:
    """A build's record, GGUFs and Modelfiles; and the sha256 each GGUF must have (build.json's)."""
    record = json.loads((build / "build.json").read_text())
    files, expected, names = {f"builds/{build.name}/build.json": build / "build.json"}, {}, []
    for art in record["artifacts"]:
        for key in ("file", "modelfile"):
            path = build / art[key]
            if not path.is_file():
                raise BadInput(f"{build} lacks {art[key]}, which its build.json lists: run orch build again for it")
            files[f"builds/{build.name}/{art[key]}"] = path
        expected[f"builds/{build.name}/{art['file']}"] = art["sha256"]
        names.append(art["ollama_name"])
    return files, {"build": build.name, "models": names}, expected


def image_files(p: BundlePlan, reporter: Reporter) -> tuple[dict[str, Path], dict]:
    from orchestrator.ship import images

    docker = shutil.which("docker")
    if docker is None:
        raise OrchError("orch bundle create --docker saves the images orch images build made, and there is no docker here: "
                        "install Docker, or leave out --docker (the bundle then runs the native runtime)")
    folder = p.parts / "images"
    folder.mkdir(parents=True, exist_ok=True)
    out, made = {}, {}
    for service, tag in images.tags().items():
        if not images.present(docker, tag):
            raise BadInput(f"{tag} is not on this machine: run orch images build first, then orch bundle create again")
        image_id = subprocess.run([docker, "image", "inspect", "--format", "{{.Id}}", tag], capture_output=True, text=True).stdout.strip()
        saved, stamp = folder / f"{service}.tar", folder / f"{service}.id"
        if not (saved.is_file() and stamp.is_file() and stamp.read_text().strip() == image_id):
            with atomic_path(saved) as tmp, reporter.task(f"docker save {tag}", None):
                if subprocess.run([docker, "save", "-o", str(tmp), tag], capture_output=True).returncode != 0:
                    raise OrchError(f"docker save {tag} failed: run it by hand to see why")
            stamp.write_text(image_id + "\n")
        out[f"images/{service}.tar"] = saved
        made[service] = tag
    return out, made


# --- the archive ------------------------------------------------------------------------------------------------------

class _Hashing:
    """A file object that hashes what passes through it (read or written) and counts it."""

    def __init__(self, f, progress=None):
        self.f, self.h, self.n, self.progress = f, hashlib.sha256(), 0, progress

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(size)
        self._saw(data)
        return data

    def write(self, data: bytes) -> int:
        self._saw(data)
        return self.f.write(data)

    def _saw(self, data: bytes) -> None:
        self.h.update(data)
        self.n += len(data)
        if self.progress:
            self.progress(len(data))

    def tell(self) -> int:
        return self.n


def _mode(path: Path) -> int:
    return 0o755 if os.access(path, os.X_OK) else 0o644


def installer_source() -> bytes:
    return (Path(__file__).with_name("bootstrap.py")).read_bytes()


def write(out: Path, members: dict[str, Path], manifest: dict, expected: dict[str, str], reporter: Reporter) -> tuple[int, str]:
    """The archive at `out`, whole or not at all; the manifest (last) lists every member's sha256. Returns size, sha256."""
    total = sum(path.stat().st_size for path in members.values())
    stamp = int(time.time())
    files = {}
    with atomic_path(out) as tmp, open(tmp, "wb") as raw, reporter.task(f"writing {out.name}", total) as task:
        sink = _Hashing(raw)
        with tarfile.open(fileobj=sink, mode="w", format=tarfile.PAX_FORMAT) as tar:
            def add(name: str, size: int, mode: int, source) -> str:
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime, info.type = size, mode, stamp, tarfile.REGTYPE
                reading = _Hashing(source, task.advance)
                tar.addfile(info, reading)
                return reading.h.hexdigest()

            installer = installer_source()
            files[INSTALLER] = {"sha256": add(INSTALLER, len(installer), 0o644, io.BytesIO(installer)), "size": len(installer), "mode": 0o644}
            for name, path in members.items():
                size, mode = path.stat().st_size, _mode(path)
                with open(path, "rb") as f:
                    digest = add(name, size, mode, f)
                if name in expected and digest != expected[name]:
                    raise OrchError(f"{path} does not match the sha256 its build.json records: it changed after orch build "
                                    "wrote it; run orch build again, then orch bundle create")
                files[name] = {"sha256": digest, "size": size, "mode": mode}
            body = json.dumps(manifest | {"files": files}, indent=1, sort_keys=True).encode()
            add(MANIFEST, len(body), 0o644, io.BytesIO(body))
        raw.flush()
        size, digest = sink.n, sink.h.hexdigest()
    return size, digest


def create(p: BundlePlan, reporter: Reporter = SILENT) -> Created:
    """Gather every part (resuming what an earlier run finished), then write the archive; OUT.parts/ goes once it is whole."""
    started = time.monotonic()
    p.parts.mkdir(exist_ok=True)
    parts: dict[str, dict[str, Path]] = {}
    parts["wheels"], webui_requirements = wheels(p, reporter)
    parts["ollama"], ollama = ollama_files(p, reporter)
    parts["llama.cpp"], llama = llama_files(reporter)
    parts["builds"], models, expected = {}, [], {}
    for build in p.builds:
        files, model, want = build_files(build)
        parts["builds"] |= files
        models.append(model)
        expected |= want
    parts["images"], images = image_files(p, reporter) if p.docker else ({}, {})
    sizes = {part: sum(path.stat().st_size for path in files.values()) for part, files in parts.items()}
    # orch's wheel first: the installer takes it out of the archive before anything else, and finds it at once
    members = {name: path for files in parts.values() for name, path in sorted(files.items(), key=lambda kv: not unbundle.is_orch_wheel(kv[0]))}
    needed = sum(sizes.values()) + (64 << 20)
    free = shutil.disk_usage(nearest_existing(p.out.parent)).free
    if free < needed:
        raise OrchError(f"the bundle needs {needed / 1e9:.1f} GB beside {p.out}, and {free / 1e9:.1f} GB is free: free some "
                        "space, or write it to another disk")
    set_bytes = {name: sum(path.stat().st_size for member, path in parts["wheels"].items() if member.startswith("wheels/")
                           and wheel_name_version(path)[0] in _pins(p.parts / REQUIREMENTS[name])) for name in REQUIREMENTS}
    contents = {"orch": __version__, "ollama": ollama, "llama_cpp": llama, "open_webui": p.webui_package.split("==", 1)[1],
                "models": models, "images": images}
    manifest = {
        "format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "made_for": p.made_for.as_dict(),
        "contents": contents,
        "install": {"orch": {"requirement": f"orch=={__version__}", "constraints": REQUIREMENTS["orch"]},
                    "open_webui": {"package": p.webui_package, "requirements": webui_requirements,
                                   "constraints": REQUIREMENTS["open-webui"]}},
        "installed_bytes": int(sum(set_bytes.values()) * INSTALLED_PER_WHEEL_BYTE),
    }
    size, digest = write(p.out, members, manifest, expected, reporter)
    shutil.rmtree(p.parts, ignore_errors=True)
    return Created(p.out, size, digest, contents, sizes, time.monotonic() - started)


def _pins(requirements: Path) -> set[str]:
    return {line.split("==", 1)[0] for line in requirements.read_text().splitlines() if line}
