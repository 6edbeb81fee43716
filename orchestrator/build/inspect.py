"""`orch inspect`: what a GGUF file holds, read with the `gguf` package (no model is loaded)."""

from __future__ import annotations

from pathlib import Path

from orchestrator.build.catalog import positions
from orchestrator.errors import BadInput

CONTROL = 3


def inspect_gguf(path: Path) -> dict:
    from gguf import GGUFReader, LlamaFileType

    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path} does not exist: give the path of a .gguf file")
    try:
        reader = GGUFReader(str(path))
    except Exception as e:  # gguf raises ValueError and others for foreign files
        raise BadInput(f"{path} is not a readable GGUF file ({type(e).__name__}): check the path") from None

    def field(key: str):
        f = reader.get_field(key)
        return None if f is None else f.contents()

    arch = field("general.architecture")
    tokens = field("tokenizer.ggml.tokens") or []
    types = field("tokenizer.ggml.token_type") or []
    special = {field(f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "unknown", "padding")}
    markers = {tokens[i]: i for i, t in enumerate(types) if t == CONTROL and i not in special}
    ftype = field("general.file_type")
    try:
        quant = LlamaFileType(ftype).name.replace("MOSTLY_", "").replace("ALL_", "") if ftype is not None else None
    except ValueError:
        quant = str(ftype)
    layers = field(f"{arch}.block_count")
    return {
        "file": str(path),
        "size": path.stat().st_size,
        "architecture": arch,
        "name": field("general.name"),
        "layers": layers,
        "positions": positions(layers) if arch == "baichuan" else None,
        "context": field(f"{arch}.context_length"),
        "embedding": field(f"{arch}.embedding_length"),
        "heads": field(f"{arch}.attention.head_count"),
        "quant": quant,
        "tensors": len(reader.tensors),
        "vocab": len(tokens),
        "chat_markers": markers,
        "add_bos_token": field("tokenizer.ggml.add_bos_token"),
    }
