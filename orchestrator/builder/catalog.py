"""The models orch knows by name, and how a SOURCE argument is resolved."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path

from orchestrator.builder import quants
from orchestrator.errors import BadInput

# llama.cpp's baichuan graph is chosen by layer count: 32 is the 7B graph (RoPE), 40 the 13B graph (ALiBi, max bias 8)
POSITIONS = {32: "rope", 40: "alibi"}


def positions(layers: int | None) -> str:
    """The position encoding llama.cpp gives a Baichuan model of this many layers ("none" for any other count)."""
    return POSITIONS.get(layers, "none")


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    params_b: float
    layers: int
    context: int
    chat: bool
    hf_id: str | None
    modelscope_id: str | None
    download_gb: float
    description: str

    def size_gb(self, quant: str) -> float:
        return quants.size_bytes(self.params_b * 1e9, quant) / 1e9

    def row(self) -> dict:
        """What `orch models` shows of this entry."""
        return {"name": self.name, "params_b": self.params_b, "layers": self.layers, "positions": positions(self.layers),
                "context": self.context, "kind": "chat" if self.chat else "base", "download_gb": self.download_gb,
                **{f"{quants.tag(q)}_gb": round(self.size_gb(q), 1) for q in ("F16", "Q8_0", "Q4_K_M")},
                "huggingface": self.hf_id, "modelscope": self.modelscope_id}


CATALOG: dict[str, CatalogEntry] = {
    e.name: e
    for e in (
        CatalogEntry("baichuan2-7b-base", 7.5, 32, 4096, False, "baichuan-inc/Baichuan2-7B-Base",
                     "baichuan-inc/Baichuan2-7B-Base", 15.0, "Baichuan2 7B base model (RoPE)"),
        CatalogEntry("baichuan2-7b-chat", 7.5, 32, 4096, True, "baichuan-inc/Baichuan2-7B-Chat",
                     "baichuan-inc/Baichuan2-7B-Chat", 15.0, "Baichuan2 7B chat model (RoPE)"),
        CatalogEntry("baichuan2-13b-base", 13.9, 40, 4096, False, "baichuan-inc/Baichuan2-13B-Base",
                     "baichuan-inc/Baichuan2-13B-Base", 27.8, "Baichuan2 13B base model (ALiBi)"),
        CatalogEntry("baichuan2-13b-chat", 13.9, 40, 4096, True, "baichuan-inc/Baichuan2-13B-Chat",
                     "baichuan-inc/Baichuan2-13B-Chat", 27.8, "Baichuan2 13B chat model (ALiBi)"),
        CatalogEntry("tiny", 0.022, 32, 4096, True, None, None, 0.0,
                     "a tiny Baichuan2-shaped chat model with random weights, made locally, offline, in seconds: "
                     "it proves the path (build, Ollama, chat), not the answers"),
    )
}

TINY_IS_A_DEMO = "a random model that proves the path (build, Ollama, chat), not the answers: its replies are noise"


def is_demo(params: float | int | None) -> bool:
    """No released Baichuan is under 7B parameters: one under 1B is orch build tiny's (or a test's), with random weights."""
    return 0 < (params or 0) < 1e9

HUBS = ("hf", "modelscope")
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_FOUR_BITS = re.compile(r"-4bits?$", re.IGNORECASE)


@dataclass(frozen=True)
class Source:
    """Where the weights come from: a catalog model, a hub repo, or a local directory."""

    kind: str  # "catalog" | "repo" | "local" | "tiny"
    name: str  # the slug the build's files are named after
    hub: str | None = None
    repo_id: str | None = None
    path: Path | None = None
    revision: str | None = None
    entry: CatalogEntry | None = None

    def describe(self) -> str:
        if self.kind == "local":
            return str(self.path)
        if self.kind == "tiny":
            return "tiny (generated locally)"
        return f"{self.repo_id} on {'ModelScope' if self.hub == 'modelscope' else 'Hugging Face'}"


def resolve(spec: str, *, hub: str = "hf", revision: str | None = None) -> Source:
    """Turn the SOURCE argument of `orch build` into a Source, or raise a one-line BadInput."""
    if hub not in HUBS:
        raise BadInput(f"unknown --source {hub!r}: use one of {', '.join(HUBS)}")
    path = Path(spec).expanduser()
    if path.is_dir():
        if _FOUR_BITS.search(path.resolve().name):
            _refuse_four_bits(path.resolve().name)
        return Source("local", slug(path.resolve().name), path=path.resolve(), revision=revision)
    if spec.startswith((".", "/", "~")) or spec.endswith("/"):
        raise BadInput(f"{spec} is not a directory: give a Baichuan2 checkpoint directory, a catalog name (orch models) or a repo id")

    if _FOUR_BITS.search(spec):
        _refuse_four_bits(spec)
    key = spec.lower()
    if key in CATALOG:
        entry = CATALOG[key]
        if key == "tiny":
            return Source("tiny", "tiny", entry=entry)
        repo = entry.modelscope_id if hub == "modelscope" else entry.hf_id
        return Source("catalog", entry.name, hub=hub, repo_id=repo, revision=revision, entry=entry)
    for entry in CATALOG.values():  # repo ids are case-insensitive on both hubs: the catalog's spelling is the canonical one
        for repo in (entry.hf_id, entry.modelscope_id):
            if repo and key == repo.lower():
                return Source("catalog", entry.name, hub=hub, repo_id=repo, revision=revision, entry=entry)
    if REPO_ID.match(spec):
        return Source("repo", slug(spec.split("/")[-1]), hub=hub, repo_id=spec, revision=revision)

    near = difflib.get_close_matches(key, list(CATALOG), n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(near)}?" if near else "see `orch models`"
    raise BadInput(f"unknown model {spec!r}: {hint} (or give a repo id like baichuan-inc/Baichuan2-7B-Chat, or a local directory)")


def _refuse_four_bits(name: str) -> None:
    base = _FOUR_BITS.sub("", name.split("/")[-1])
    full = next((e for e in CATALOG.values() if e.hf_id and e.hf_id.split("/")[-1].lower() == base.lower()), None)
    target = full.name if full else base
    raise BadInput(
        f"{name} is a bitsandbytes 4-bit checkpoint, which cannot become a GGUF: "
        f"build the full-precision model instead (orch build {target}) and quantize with --quant q4_K_M"
    )


def slug(name: str) -> str:
    """A file-name-safe, lowercase model name: Baichuan2-7B-Chat -> baichuan2-7b-chat."""
    s = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-.")
    # mostly non-ASCII (我的模型) or too long for a file name: a hash of the whole name keeps two such names apart
    if (s != name.lower().strip("-.") and len(s) < len(name) // 2) or len(s) > 80:
        import hashlib

        s = f"{(s or 'model')[:71].rstrip('-.')}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    return s or "model"
