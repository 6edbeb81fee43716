"""What a Baichuan checkpoint directory holds, read without executing or loading it."""

from __future__ import annotations

import json
import pickle
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.builder import config_values as values
from orchestrator.builder import normhead
from orchestrator.builder.catalog import POSITIONS, positions
from orchestrator.builder.chat_format import ChatMarkers
from orchestrator.builder.sentencepiece_model import SentencePieceModel
from orchestrator.errors import BadInput

CONFIG_FILES = ("config.json", "generation_config.json", "tokenizer_config.json", "special_tokens_map.json",
                "tokenizer.model")
LICENSE_GLOBS = ("LICENSE*", "License*", "*Community License*.txt", "NOTICE*")
BAICHUAN_ARCHS = ("BaichuanForCausalLM", "BaiChuanForCausalLM")


@dataclass(frozen=True)
class GenerationDefaults:
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    repeat_penalty: float | None = None
    num_predict: int | None = None

    def as_parameters(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class Checkpoint:
    """The facts the build needs, read from config files and tensor headers."""

    path: Path
    config: dict
    generation: int
    generation_evidence: str
    layers: int
    positions: str
    chat: bool
    markers: ChatMarkers | None
    defaults: GenerationDefaults
    weight_files: tuple[str, ...]
    weight_format: str
    n_params: int
    context: int
    license_files: tuple[str, ...] = field(default=())
    bos_id: int = 1
    eos_id: int = 2

    @property
    def normhead(self) -> bool:
        return self.generation == 2

    def needed_files(self) -> list[str]:
        """What the converter reads: config and tokenizer files, the weights and their index."""
        names = [n for n in CONFIG_FILES if (self.path / n).is_file()]
        index = "model.safetensors.index.json" if self.weight_format == "safetensors" else "pytorch_model.bin.index.json"
        if (self.path / index).is_file():
            names.append(index)
        return names + list(self.weight_files)

    def summary(self) -> dict:
        return {
            "generation": self.generation,
            "generation_evidence": self.generation_evidence,
            "normhead": self.normhead,
            "layers": self.layers,
            "positions": self.positions,
            "hidden_size": self.config.get("hidden_size"),
            "vocab_size": self.config.get("vocab_size"),
            "context": self.context,
            "params": self.n_params,
            "chat": self.chat,
            "markers": None if self.markers is None else self.markers.__dict__,
            "weights": {"format": self.weight_format, "files": list(self.weight_files)},
        }


def read(path: Path, *, chat_hint: bool | None = None) -> Checkpoint:
    """Read and validate a Baichuan checkpoint directory, or raise a one-line BadInput naming the fix."""
    path = Path(path)
    _refuse_links_out(path)
    config = _json(path / "config.json", required=True)
    archs, model_type = values.names(config, "config.json", "architectures"), values.name(config, "config.json", "model_type")
    if model_type != "baichuan" and not any(a in BAICHUAN_ARCHS for a in archs):
        what = archs[0] if archs else model_type or "unknown"
        raise BadInput(f"{path}/config.json describes a {what} model, not Baichuan: orch builds Baichuan 2 (and 1) checkpoints only")
    if quantized := values.mapping(config, "config.json", "quantization_config"):
        method = values.name(quantized, "config.json quantization_config", "quant_method") or "quantized"
        raise BadInput(f"{path} holds a pre-quantized checkpoint ({method}): build the full-precision model instead")
    if not (path / "tokenizer.model").is_file():
        raise BadInput(f"{path} has no tokenizer.model: copy the SentencePiece tokenizer.model from the original model repo into it")
    layers = values.integer(config, "config.json", "num_hidden_layers", lo=1, hi=1000, default=0)
    if layers not in POSITIONS:
        raise BadInput(f"{path} has {layers} layers: llama.cpp's baichuan graph knows 32 (7B, RoPE) and 40 (13B, ALiBi) only, "
                        "and would run any other count without position encoding")

    weight_format, files = _weight_files(path)
    n_params = sum(_numel(s) for s in tensor_shapes(path, weight_format, files).values())
    gen_cfg = _json(path / "generation_config.json")
    generation, evidence = normhead.detect_generation(path, config)
    sp = SentencePieceModel.read(path / "tokenizer.model")  # once: ids are checked against it, and the markers' pieces read
    bos_id, eos_id = (values.integer(config, "config.json", key, lo=0, hi=len(sp) - 1, default=fallback)
                      for key, fallback in (("bos_token_id", 1), ("eos_token_id", 2)))
    markers = _markers(sp, gen_cfg)
    chat = markers is not None if chat_hint is None else chat_hint and markers is not None
    if chat_hint and markers is None:
        raise BadInput(f"{path}/generation_config.json names no user_token_id/assistant_token_id: "
                        "a chat model needs them; build it as a base model or add them")
    gen = "generation_config.json"
    defaults = GenerationDefaults(  # these go into the Modelfile: numbers only, each in its range
        temperature=values.number(gen_cfg, gen, "temperature", lo=0, hi=100),
        top_k=values.integer(gen_cfg, gen, "top_k", lo=0, hi=1_000_000, default=None),
        top_p=values.number(gen_cfg, gen, "top_p", lo=0, hi=1),
        repeat_penalty=values.number(gen_cfg, gen, "repetition_penalty", lo=0, hi=100),
        num_predict=values.integer(gen_cfg, gen, "max_new_tokens", lo=-2, hi=10_000_000, default=None),
    ) if chat else GenerationDefaults()
    licenses = sorted({p.name for g in LICENSE_GLOBS for p in path.glob(g) if p.is_file() and p.suffix in ("", ".txt", ".md")})
    return Checkpoint(
        path=path,
        config=config,
        generation=generation,
        generation_evidence=evidence,
        layers=layers,
        positions=positions(layers),
        chat=chat,
        markers=markers,
        defaults=defaults,
        weight_files=tuple(files),
        weight_format=weight_format,
        n_params=n_params,
        context=(values.integer(config, "config.json", "max_position_embeddings", lo=1, hi=10_000_000, default=None)
                 or values.integer(config, "config.json", "model_max_length", lo=1, hi=10_000_000, default=None) or 4096),
        bos_id=bos_id,
        eos_id=eos_id,
        license_files=tuple(licenses),
    )


READ_GLOBS = (*CONFIG_FILES, "modeling_baichuan.py", "*.index.json", "model*.safetensors", "pytorch_model*.bin", *LICENSE_GLOBS)


def _refuse_links_out(path: Path) -> None:
    """No file orch reads from a checkpoint may be a symlink to a place outside it (a LICENSE linked to ~/.ssh/id_rsa
    would be copied into the Modelfile and sent to the server). Hugging Face's own cache is the one layout allowed:
    a snapshot's files link to the blobs/ of the same repo."""
    root = path.resolve()
    allowed = [root] + ([root.parents[1] / "blobs"] if root.parent.name == "snapshots" else [])
    for pattern in READ_GLOBS:
        for entry in path.glob(pattern):
            if entry.is_symlink():
                target = entry.resolve()
                if not any(target == a or a in target.parents for a in allowed):
                    raise BadInput(f"{entry} is a symlink to {target}, outside the checkpoint: orch reads no file from outside "
                                   "it; copy the file into the directory instead")


def _json(path: Path, required: bool = False) -> dict:
    if not path.is_file():
        if required:
            raise BadInput(f"{path.parent} has no {path.name}: is this a Hugging Face model directory?")
        return {}
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadInput(f"{path} is not valid JSON ({e}): download it again") from None
    if not isinstance(loaded, dict):
        raise BadInput(f"{path} holds a JSON {type(loaded).__name__}, not an object: download it again")
    return loaded


def _weight_files(path: Path) -> tuple[str, list[str]]:
    for fmt, prefix, ext in (("safetensors", "model", ".safetensors"), ("bin", "pytorch_model", ".bin")):
        index = path / f"{prefix}{ext}.index.json"
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            missing = [f for f in files if not (path / f).is_file()]
            if missing:
                raise BadInput(f"{path} lacks {', '.join(missing)} named by {index.name}: finish the download (orch build resumes it)")
            return fmt, files
        files = sorted(p.name for p in path.glob(f"{prefix}*{ext}"))
        if files:
            return fmt, files
    raise BadInput(f"{path} has no weights (model*.safetensors or pytorch_model*.bin)")


def tensor_shapes(path: Path, fmt: str, files: list[str]) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from the file headers; the weights themselves are not read."""
    shapes: dict[str, tuple[int, ...]] = {}
    for name in files:
        f = path / name
        try:
            shapes.update(_safetensors_shapes(f) if fmt == "safetensors" else _pickle_shapes(f))
        except (OSError, ValueError, KeyError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, struct.error) as e:
            raise BadInput(f"{f} cannot be read as a {fmt} state dict ({type(e).__name__}: {str(e)[:100]}): download it again") from None
    return shapes


def _safetensors_shapes(f: Path) -> dict[str, tuple[int, ...]]:
    """Shapes from the header, read and bounded by safetensors itself (a garbage length or entry is its error, not ours)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(f), framework="numpy") as st:
            return {k: tuple(st.get_slice(k).get_shape()) for k in st.keys()}
    except SafetensorError as e:
        raise ValueError(str(e)) from None


class _ShapeUnpickler(pickle.Unpickler):
    """Reads a torch.save zip's data.pkl for tensor shapes only.

    Hand-written because importing torch here would cost the parent process
    about 200 MB and a second for one integer; nothing outside this allow-list
    is ever resolved, so no code from the file runs.
    """

    def find_class(self, module: str, name: str):
        if (module, name) in (("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor")):
            return lambda storage, offset, size, *rest: tuple(size)
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return lambda data, *rest: data
        if (module, name) == ("collections", "OrderedDict"):
            return dict
        if module == "torch" and name.endswith("Storage"):
            return name
        raise pickle.UnpicklingError(f"unexpected {module}.{name} in a state dict")

    def persistent_load(self, pid):
        return None


MAX_PICKLE = 16 << 20  # a state dict's data.pkl names its tensors in about 200 bytes each: 13B's is under 100 KB


def _pickle_shapes(f: Path) -> dict[str, tuple[int, ...]]:
    with zipfile.ZipFile(f) as z:
        pkl = next((n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
        if pkl is None:
            raise ValueError("no data.pkl")
        if z.getinfo(pkl).file_size > MAX_PICKLE:  # zipfile reads no further than the size it declares
            raise ValueError(f"its data.pkl unpacks to {z.getinfo(pkl).file_size} bytes, not the few kilobytes of a state dict")
        with z.open(pkl) as fh:
            state = _ShapeUnpickler(fh).load()
    if not isinstance(state, dict):
        raise ValueError("not a state dict")
    return {k: v for k, v in state.items() if isinstance(v, tuple)}


def _markers(sp: SentencePieceModel, gen_cfg: dict) -> ChatMarkers | None:
    """The chat markers generation_config.json names, checked to be single reserved pieces of this tokenizer.

    Judged by piece type, not by encoding the piece's text: with a dummy prefix
    a user-defined piece encodes as [▁, id] and is still one symbol.
    """
    if "user_token_id" not in gen_cfg or "assistant_token_id" not in gen_cfg:
        return None
    ids = tuple(values.integer(gen_cfg, "generation_config.json", key, lo=-(2**31), hi=2**31) for key in ("user_token_id", "assistant_token_id"))
    for key, tid in zip(("user_token_id", "assistant_token_id"), ids):
        if not 0 <= tid < len(sp):
            raise BadInput(f"generation_config.json {key} {tid} is outside the tokenizer's {len(sp)} pieces: "
                           "the tokenizer.model does not belong to this model")
        piece = sp.pieces[tid]
        # typed CONTROL in the GGUF, so it must be a reserved piece, never text the model also writes
        reserved = piece.startswith("<") and piece.endswith(">") and len(piece) > 2
        if not reserved or not sp.is_symbol(tid):
            raise BadInput(f"generation_config.json {key} {tid} is {piece!r} ({sp.types[tid].lower()} piece), not a single reserved "
                           "piece like <reserved_106> in tokenizer.model: fix generation_config.json or use the model's own tokenizer.model")
    return ChatMarkers(ids[0], ids[1], sp.pieces[ids[0]], sp.pieces[ids[1]])


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
