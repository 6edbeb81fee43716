"""Bring a checkpoint onto this machine: Hugging Face (or a mirror via HF_ENDPOINT), ModelScope, or a local directory.

Only the files the build needs are downloaded, through each hub's own
resumable client; large files are checked against the sha256 the hub
publishes for them.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator import paths
from orchestrator.catalog import Source
from orchestrator.checkpoint import CONFIG_FILES, LICENSE_GLOBS
from orchestrator.errors import OrchError

# read as text for Baichuan 1/2 detection (it defines NormHead); never imported or executed
TEXT_ONLY = ("modeling_baichuan.py",)


@dataclass
class Fetched:
    model_dir: Path
    revision: str | None
    expected_sha256: dict[str, str] = field(default_factory=dict)


def select_files(names: list[str]) -> list[str]:
    """The files of a repo listing that a build reads: configs, tokenizer, one weight format and its index, licences."""
    top = [n for n in names if "/" not in n]
    wanted = [n for n in top if n in CONFIG_FILES or n in TEXT_ONLY
              or any(fnmatch.fnmatch(n, g) for g in LICENSE_GLOBS) and not n.endswith(".pdf")]
    safetensors = [n for n in top if fnmatch.fnmatch(n, "model*.safetensors") or n == "model.safetensors.index.json"]
    pickles = [n for n in top if fnmatch.fnmatch(n, "pytorch_model*.bin") or n == "pytorch_model.bin.index.json"]
    return sorted(set(wanted + (safetensors or pickles)))


def fetch(source: Source, *, console=None) -> Fetched:
    if source.kind == "local":
        return Fetched(source.path, source.revision)
    if source.kind == "tiny":
        return Fetched(tiny_checkpoint(), "generated")
    if source.hub == "modelscope":
        return _modelscope(source)
    return _huggingface(source)


def tiny_checkpoint(layers: int = 32) -> Path:
    """The tiny model for `orch build tiny`, generated once into the cache."""
    from orchestrator.tiny import make_tiny_checkpoint

    dest = paths.cache_home() / "models" / f"tiny-{layers}"
    if not (dest / "config.json").is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        make_tiny_checkpoint(dest, layers)
    return dest


def _huggingface(source: Source) -> Fetched:
    try:
        from huggingface_hub import HfApi, snapshot_download
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError
    except ImportError:  # pragma: no cover - a dependency
        raise OrchError("huggingface_hub is not installed: pip install huggingface_hub") from None
    api = HfApi()
    try:
        info = api.model_info(source.repo_id, revision=source.revision, files_metadata=True)
    except GatedRepoError:
        raise OrchError(f"{source.repo_id} is gated: accept its licence on the hub, then set HF_TOKEN") from None
    except RepositoryNotFoundError:
        raise OrchError(f"{source.repo_id} was not found on the hub (or is private: set HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise OrchError(f"revision {source.revision!r} of {source.repo_id} does not exist: check --revision") from None
    except Exception as e:  # HTTP errors and whatever the transport raises when the hub is unreachable
        raise _unreachable("Hugging Face", e) from None
    names = [s.rfilename for s in info.siblings or []]
    files = select_files(names)
    _check_listing(source, files)
    expected = {s.rfilename: s.lfs.sha256 for s in info.siblings or [] if s.rfilename in files and s.lfs}
    try:
        local = snapshot_download(source.repo_id, revision=info.sha, allow_patterns=files)
    except Exception as e:
        raise _unreachable("Hugging Face", e, downloading=True) from None
    return Fetched(Path(local), info.sha, expected)


def _unreachable(hub: str, e: Exception, *, downloading: bool = False) -> OrchError:
    detail = str(e).splitlines()[0] if str(e) else "no detail"
    if hub == "Hugging Face":
        fix = "set HF_ENDPOINT to a mirror (e.g. https://hf-mirror.com), or use --source modelscope, or pass a downloaded directory"
    else:
        fix = "check the model id and your network, or use --source hf, or pass a downloaded directory"
    if downloading:
        fix = "run the same command again to resume, or " + fix
    return OrchError(f"{hub} failed{' while downloading' if downloading else ''} ({type(e).__name__}: {detail}): {fix}")


def _modelscope(source: Source) -> Fetched:
    try:
        from modelscope.hub.api import HubApi
        from modelscope.hub.snapshot_download import snapshot_download
    except ImportError:
        raise OrchError("ModelScope support needs the modelscope package: pip install 'orch[modelscope]'") from None
    try:
        listing = HubApi().get_model_files(source.repo_id, revision=source.revision or "master", recursive=True)
    except Exception as e:  # modelscope raises many types for network and lookup failures
        raise _unreachable("ModelScope", e) from None
    names = [f["Path"] for f in listing if f.get("Type") != "tree"]
    files = select_files(names)
    _check_listing(source, files)
    expected = {f["Path"]: f["Sha256"] for f in listing if f.get("Path") in files and f.get("Sha256")}
    try:
        local = snapshot_download(source.repo_id, revision=source.revision, allow_patterns=files)
    except Exception as e:
        raise _unreachable("ModelScope", e, downloading=True) from None
    return Fetched(Path(local), source.revision or "master", expected)


def _check_listing(source: Source, files: list[str]) -> None:
    if "config.json" not in files:
        raise OrchError(f"{source.repo_id} has no config.json: it is not a Hugging Face model repo")
    if not any(f.endswith((".bin", ".safetensors")) for f in files):
        raise OrchError(f"{source.repo_id} has no model*.safetensors or pytorch_model*.bin weights")
