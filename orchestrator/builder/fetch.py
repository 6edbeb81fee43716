"""Bring a checkpoint onto this machine: Hugging Face (or a mirror via HF_ENDPOINT), ModelScope, or a local directory.

One adapter per hub, each driving the hub's own resumable client: list the
repo (with the sha256 the hub publishes for each weight file), pick the files
a build reads, download them. The hashes are checked by the pipeline before
anything made from the files takes a final name.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from orchestrator import paths
from orchestrator.builder.catalog import Source
from orchestrator.builder.checkpoint import CONFIG_FILES, LICENSE_GLOBS
from orchestrator.errors import BadInput, OrchError

# read as text for Baichuan 1/2 detection (it defines NormHead); never imported or executed
TEXT_ONLY = ("modeling_baichuan.py",)


@dataclass
class Fetched:
    model_dir: Path
    revision: str | None
    expected_sha256: dict[str, str] = field(default_factory=dict)


@dataclass
class Listing:
    """A repo at one revision: its file names and the sha256 the hub publishes for those it has one for."""

    revision: str
    files: list[str]
    sha256: dict[str, str] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)


class Hub(Protocol):
    name: str

    def listing(self, source: Source) -> Listing: ...

    def download(self, source: Source, listing: Listing, files: list[str]) -> Path: ...


def select_files(names: list[str]) -> list[str]:
    """The files of a repo listing that a build reads: configs, tokenizer, one weight format and its index, licences."""
    top = [n for n in names if "/" not in n]
    wanted = [n for n in top if n in CONFIG_FILES or n in TEXT_ONLY
              or any(fnmatch.fnmatch(n, g) for g in LICENSE_GLOBS) and not n.endswith(".pdf")]
    safetensors = [n for n in top if fnmatch.fnmatch(n, "model*.safetensors") or n == "model.safetensors.index.json"]
    pickles = [n for n in top if fnmatch.fnmatch(n, "pytorch_model*.bin") or n == "pytorch_model.bin.index.json"]
    return sorted(set(wanted + (safetensors or pickles)))


def fetch(source: Source, before_download: Callable[[], None] = lambda: None) -> Fetched:
    """The checkpoint on this machine; for a hub, `before_download` runs once the repo is known to exist, before the (long) download."""
    if source.kind == "local":
        return Fetched(source.path, source.revision)
    if source.kind == "tiny":
        return Fetched(tiny_checkpoint(), "generated")
    hub: Hub = ModelScope() if source.hub == "modelscope" else HuggingFace()
    listing = hub.listing(source)
    files = select_files(listing.files)
    if "config.json" not in files:
        raise BadInput(f"{source.repo_id} has no config.json: it is not a Hugging Face model repo")
    if not any(f.endswith((".bin", ".safetensors")) for f in files):
        raise BadInput(f"{source.repo_id} has no model*.safetensors or pytorch_model*.bin weights")
    before_download()
    local = hub.download(source, listing, files)
    return Fetched(local, listing.revision, {f: h for f, h in listing.sha256.items() if f in files})


def fetch_adapter(spec: str, hub: str = "hf", revision: str | None = None) -> Fetched:
    """A LoRA adapter: a local directory, or a hub repo (only adapter_config.json and its weights are downloaded)."""
    from orchestrator.builder.adapter import CONFIG, WEIGHTS
    from orchestrator.builder.catalog import REPO_ID

    path = Path(spec).expanduser()
    if path.is_dir():
        return Fetched(path.resolve(), None)
    if spec.startswith((".", "/", "~")) or not REPO_ID.match(spec):
        raise BadInput(f"--adapter {spec} is neither a directory nor a hub repo id: pass the directory PEFT saved the adapter into")
    source = Source("repo", spec.split("/")[-1], hub=hub, repo_id=spec, revision=revision)
    client: Hub = ModelScope() if hub == "modelscope" else HuggingFace()
    listing = client.listing(source)
    files = [f for f in listing.files if f == CONFIG or f in WEIGHTS]
    if CONFIG not in files:
        raise BadInput(f"{spec} has no {CONFIG} at its top level: is it a PEFT adapter repo?")
    weights = [f for f in WEIGHTS if f in files][:1]  # the safetensors when both are there
    local = client.download(source, listing, [CONFIG, *weights])
    return Fetched(local, listing.revision, {f: h for f, h in listing.sha256.items() if f in weights})


def tiny_checkpoint(layers: int = 32) -> Path:
    """The tiny model for `orch build tiny`, generated once into the cache."""
    from orchestrator.builder.tiny import make_tiny_checkpoint

    dest = paths.cache_home() / "models" / f"tiny-{layers}-v2"  # v2: replies of 48 tokens (v1 allowed 2048)
    if not (dest / "config.json").is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        make_tiny_checkpoint(dest, layers)
    return dest


def unreachable(hub: str, e: Exception, *, repo: str, downloading: bool = False) -> OrchError:
    """A hub that did not answer, naming the repo and the endpoint tried, and the fix that is not already in place."""
    from orchestrator import settings

    detail = str(e).splitlines()[0] if str(e) else "no detail"
    if hub == "Hugging Face":
        endpoint, named = settings.hub_endpoint("hf")
        mirror = "check that the mirror in HF_ENDPOINT serves it" if named else "set HF_ENDPOINT to a mirror (e.g. https://hf-mirror.com)"
        fix = f"{mirror}, or use --source modelscope, or pass a downloaded directory"
    else:
        endpoint = settings.hub_endpoint("modelscope")[0]
        fix = "check the model id and your network, or use --source hf, or pass a downloaded directory"
    if downloading:
        fix = "run the same command again to resume, or " + fix
    return OrchError(f"{hub} ({endpoint}) failed{' while downloading' if downloading else ''} {repo} "
                     f"({type(e).__name__}: {detail[:200]}): {fix}")


class HuggingFace:
    """huggingface_hub: the hub, or any mirror named by HF_ENDPOINT (HF_TOKEN honoured)."""

    name = "Hugging Face"

    def listing(self, source: Source) -> Listing:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

        try:
            info = HfApi().model_info(source.repo_id, revision=source.revision, files_metadata=True)
        except GatedRepoError:
            raise BadInput(f"{source.repo_id} is gated: accept its licence on the hub, then set HF_TOKEN") from None
        except RevisionNotFoundError:
            raise BadInput(f"revision {source.revision!r} of {source.repo_id} does not exist: check --revision") from None
        except RepositoryNotFoundError:
            raise BadInput(f"{source.repo_id} was not found on the hub (or is private: set HF_TOKEN)") from None
        except Exception as e:  # HTTP errors and whatever the transport raises when the hub is unreachable
            raise unreachable(self.name, e, repo=source.repo_id) from None
        siblings = info.siblings or []
        return Listing(info.sha, [s.rfilename for s in siblings], {s.rfilename: s.lfs.sha256 for s in siblings if s.lfs})

    def download(self, source: Source, listing: Listing, files: list[str]) -> Path:
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(source.repo_id, revision=listing.revision, allow_patterns=files))
        except Exception as e:
            raise unreachable(self.name, e, repo=source.repo_id, downloading=True) from None


class ModelScope:
    """modelscope's hub client (modelscope_hub, under the `modelscope` package); MODELSCOPE_ENDPOINT moves it."""

    name = "ModelScope"

    @staticmethod
    def _client():
        """The modelscope_hub module, or one line naming the install (the first thing Chinese users try)."""
        try:
            import modelscope_hub
        except ImportError:
            raise OrchError("ModelScope support needs the modelscope package: pip install 'orch[modelscope]' "
                            "(or use --source hf with HF_ENDPOINT set to a mirror)") from None
        return modelscope_hub

    def _api(self):
        return self._client().HubApi()

    def listing(self, source: Source) -> Listing:
        client = self._client()
        NotExistError, NotFoundError = client.NotExistError, client.NotFoundError  # noqa: N806

        revision = source.revision or "master"
        try:
            entries = self._api().list_repo_files(source.repo_id, "model", revision=revision, recursive=True)
        except (NotFoundError, NotExistError) as e:
            what = f"revision {revision!r} of {source.repo_id}" if source.revision else source.repo_id
            raise BadInput(f"{what} was not found on ModelScope ({_first_line(e)}): check the model id and --revision") from None
        except Exception as e:  # modelscope raises many types for network and lookup failures
            raise unreachable(self.name, e, repo=source.repo_id) from None
        files = [f for f in entries if not f.is_dir]
        # the current client keeps the published hashes here; the legacy get_model_files() drops them
        return Listing(revision, [f.path for f in files], {f.path: f.sha256 for f in files if f.sha256}, {f.path: f.size for f in files})

    def download(self, source: Source, listing: Listing, files: list[str]) -> Path:
        client = self._client()
        FileDownloadError, FileIntegrityError = client.FileDownloadError, client.FileIntegrityError  # noqa: N806

        # the listing already made, handed back so that the client does not ask for it again
        entries = [{"Path": f, "Size": listing.sizes.get(f, 0), "Sha256": listing.sha256.get(f)} for f in files]
        try:
            return Path(self._api().download_repo(source.repo_id, "model", revision=listing.revision, allow_patterns=files,
                                                  file_list=entries))
        except FileDownloadError as e:
            corrupt = sorted(f for f, err in e.failed_files.items() if isinstance(err, FileIntegrityError))
            if corrupt:
                raise OrchError(f"{', '.join(corrupt)} as downloaded does not match the sha256 ModelScope publishes for it (a corrupt "
                                "download, refused by the client): run the same command again, or use --source hf") from None
            raise unreachable(self.name, e, repo=source.repo_id, downloading=True) from None
        except Exception as e:
            raise unreachable(self.name, e, repo=source.repo_id, downloading=True) from None


def discard(path: Path) -> None:
    """Remove a downloaded file from the hub client's cache (the snapshot link and the blob it points to), so a rerun fetches it again."""
    target = path.resolve()
    path.unlink(missing_ok=True)
    if target != path:
        target.unlink(missing_ok=True)


def _first_line(e: Exception) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:200]
