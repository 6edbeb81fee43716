"""The environment and the version pins, read nowhere else (as Ollama's envconfig/ and huggingface_hub's constants.py).

One place shows everything orch can be told from outside and everything it
pins. Environment values are read when asked (tests and users change them
between commands); pins are constants a test holds to pyproject.toml and to
the advisories in ollama/vulns.py.
"""

from __future__ import annotations

import os
from pathlib import Path

# --- what orch runs and builds ----------------------------------------------------------------------------------------
# What `orch install-ollama` builds from the Go module proxy, what `orch images build` puts in its image, what the
# docker and Kubernetes stacks run (ollama/ollama at this tag), and what the tests run: one release, so that no image
# runs a release the suite has not. Read 2026-12-01: proxy.golang.org serves github.com/ollama/ollama up to v0.34.4
# and refuses v0.35.0 and later ("not available"); 0.34.2 to 0.34.4 carry CVE-2026-103663 (ollama/vulns.py), so
# 0.34.1 is the newest it serves with no advisory on record.
OLLAMA_SOURCE_VERSION = "0.34.1"
OLLAMA_VERSION = OLLAMA_SOURCE_VERSION  # the docker image's tag
OLLAMA_MODULE = "github.com/ollama/ollama"
# The module's hash as Go's checksum database publishes it (sum.golang.org/lookup/github.com/ollama/ollama@v0.34.1,
# read 2026-12-03): orch recomputes it over the source it builds, whatever GOSUMDB, GONOSUMDB or GOFLAGS say.
OLLAMA_MODULE_H1 = {"0.34.1": "h1:Lvvxjznml8NJA9aDKZVNYHaZSL+7ji0RLkV+BTL1yvk="}
# Open WebUI 0.12.4 (read 2026-11-23) is the newest on PyPI and ghcr.io, with no advisory on record against it.
WEBUI_VERSION = "0.12.4"
# llama.cpp's converter, bindings and the tree orch compiles: all from this llama-cpp-python release's sdist. The
# sdist's sha256 and size as PyPI's simple index lists them (read 2026-12-03).
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
LLAMA_CPP_SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
LLAMA_CPP_SDIST_BYTES = 76_589_250
PYPI_SIMPLE = "https://pypi.org/simple"
# the in-cluster monitor's interpreter: the minor-version tag, which takes Debian's security rebuilds
PYTHON_IMAGE = "python:3.13-slim"
OSV_URL = "https://api.osv.dev/v1/query"

# --- what a user (or a test) can tell orch through the environment ----------------------------------------------------
OLLAMA_HOST = "OLLAMA_HOST"  # Ollama's own: the server orch talks to when no --host is given
WEBUI_VERSION_ENV = "ORCH_WEBUI_VERSION"  # another Open WebUI release than the pinned one (held back, or tried ahead)
WEBUI_VENV_ENV = "ORCH_WEBUI_VENV"  # where Open WebUI's virtualenv lives [default: ~/.local/share/orch/open-webui-venv-VERSION]
WEBUI_PREINSTALL_ENV = "ORCH_WEBUI_PREINSTALL"  # pip requirements installed first, instead of the CPU torch (below)
TORCH_CPU_INDEX_ENV = "ORCH_TORCH_CPU_INDEX"  # where CPU-only torch wheels come from on a box with no GPU (a mirror, or "none")
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"  # PyPI's torch is a CUDA build on Linux (2.7 GB of nvidia-* packages)
OSV_URL_ENV = "ORCH_OSV_URL"  # a mirror of OSV's API (or a test's double)
KUBECTL_ENV = "ORCH_KUBECTL"
LLAMA_CPP_ENV = "ORCH_LLAMA_CPP"  # a llama.cpp tree to use instead of the pinned release
LLAMA_CPP_SDIST_ENV = "ORCH_LLAMA_CPP_SDIST"  # the pinned sdist, downloaded by hand (still checked against its sha256)
BACKUP_KEY_ENV = "ORCH_BACKUP_KEY"  # the backup signing key (hex), as the Kubernetes backup Job gets it
STACK_ID_ENV = "ORCH_STACK_ID"
WEBUI_SECRET_ENV = "WEBUI_SECRET_KEY"


def get(name: str) -> str:
    """One variable, stripped; empty when unset."""
    return os.environ.get(name, "").strip()


def child_env(**extra: str) -> dict[str, str]:
    """The environment a child process gets: the user's own, with `extra` on top."""
    return dict(os.environ) | extra


def cache_home() -> Path:
    return Path(get("XDG_CACHE_HOME") or Path.home() / ".cache") / "orch"


def data_home() -> Path:
    return Path(get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "orch"


def data_homes() -> list[Path]:
    """Where orch's installs may be: $XDG_DATA_HOME's, then the default's (one made before XDG_DATA_HOME was set)."""
    default = Path.home() / ".local" / "share" / "orch"
    return [data_home()] + ([default] if default != data_home() else [])


def ollama_host() -> str | None:
    return get(OLLAMA_HOST) or None


def osv_url() -> str:
    return get(OSV_URL_ENV) or OSV_URL


def webui_version() -> str:
    return get(WEBUI_VERSION_ENV) or WEBUI_VERSION


def webui_venv() -> Path | None:
    return Path(get(WEBUI_VENV_ENV)) if get(WEBUI_VENV_ENV) else None


def webui_preinstall() -> list[str]:
    return get(WEBUI_PREINSTALL_ENV).split()


def torch_cpu_index() -> str | None:
    value = get(TORCH_CPU_INDEX_ENV) or TORCH_CPU_INDEX
    return None if value == "none" else value


def kubectl() -> str | None:
    return get(KUBECTL_ENV) or None


def llama_cpp_tree() -> Path | None:
    return Path(get(LLAMA_CPP_ENV)) if get(LLAMA_CPP_ENV) else None


def llama_cpp_sdist() -> Path | None:
    return Path(get(LLAMA_CPP_SDIST_ENV)).expanduser() if get(LLAMA_CPP_SDIST_ENV) else None


def pip_index() -> str:
    """Where pip looks for packages: PIP_INDEX_URL, else pip's own configuration, else PyPI."""
    if get("PIP_INDEX_URL"):
        return get("PIP_INDEX_URL")
    import subprocess
    import sys

    try:
        listed = subprocess.run([sys.executable, "-m", "pip", "config", "list", "--disable-pip-version-check"],
                                capture_output=True, text=True, timeout=60, env=child_env(PIP_NO_INPUT="1")).stdout
    except (OSError, subprocess.TimeoutExpired):
        listed = ""
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        if key.strip() in ("global.index-url", "download.index-url", "install.index-url"):
            return value.strip().strip("'\"")
    return PYPI_SIMPLE


def hub_endpoint(kind: str) -> tuple[str, bool]:
    """The hub's URL for "hf" or "modelscope", and whether the user named a mirror."""
    name, default = {"hf": ("HF_ENDPOINT", "https://huggingface.co"), "modelscope": ("MODELSCOPE_ENDPOINT", "https://www.modelscope.cn")}[kind]
    return (get(name) or default), bool(get(name))


def go_checks_off() -> list[str]:
    """The Go settings in the environment that turn its checksum database off for some or all modules."""
    said = [f"{name}={get(name)}" for name in ("GONOSUMDB", "GONOSUMCHECK", "GOPRIVATE", "GOINSECURE") if get(name)]
    if get("GOSUMDB") == "off":
        said.append("GOSUMDB=off")
    if "-insecure" in get("GOFLAGS"):
        said.append(f"GOFLAGS={get('GOFLAGS')}")
    return said


def goproxy() -> str:
    return get("GOPROXY") or "go env GOPROXY"


def backup_signing() -> tuple[str, str, str]:
    """WEBUI_SECRET_KEY (as set, whitespace and all: it is a key), ORCH_BACKUP_KEY and ORCH_STACK_ID; empty when not set."""
    return os.environ.get(WEBUI_SECRET_ENV, ""), get(BACKUP_KEY_ENV), get(STACK_ID_ENV)
