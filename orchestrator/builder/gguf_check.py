"""`orch inspect`: what a GGUF holds, and whether a Baichuan GGUF (orch's or anyone's) was converted right.

Read with the `gguf` package (the weights are not loaded, only output.weight
is dequantized to judge NormHead); the chat markers' tokenization asks
llama.cpp with the vocabulary alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from orchestrator.builder.catalog import positions
from orchestrator.errors import BadInput

CONTROL = 3
VOCAB_GENERATION = {125696: 2, 64000: 1}  # Baichuan 2's and Baichuan 1's vocabularies
MARKER_PIECES = ("<reserved_106>", "<reserved_107>")  # Baichuan 2's user and assistant markers
PASS, FAIL, WARN, UNKNOWN = "pass", "fail", "warn", "unknown"


@dataclass(frozen=True)
class Verdict:
    check: str
    status: str  # pass | fail | warn | unknown
    detail: str


def _reader(path: Path):
    from gguf import GGUFReader

    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path} does not exist: give the path of a .gguf file")
    try:
        return GGUFReader(str(path))
    except Exception as e:  # gguf raises ValueError and others for foreign files
        raise BadInput(f"{path} is not a readable GGUF file ({type(e).__name__}): check the path") from None


def _field(reader, key: str):
    f = reader.get_field(key)
    return None if f is None else f.contents()


def inspect_gguf(path: Path) -> dict:
    from gguf import LlamaFileType

    path = Path(path)
    reader = _reader(path)
    arch = _field(reader, "general.architecture")
    tokens = _field(reader, "tokenizer.ggml.tokens") or []
    types = _field(reader, "tokenizer.ggml.token_type") or []
    special = {_field(reader, f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "unknown", "padding")}
    markers = {tokens[i]: i for i, t in enumerate(types) if t == CONTROL and i not in special}
    ftype = _field(reader, "general.file_type")
    try:
        quant = LlamaFileType(ftype).name.replace("MOSTLY_", "").replace("ALL_", "") if ftype is not None else None
    except ValueError:
        quant = str(ftype)
    layers = _field(reader, f"{arch}.block_count")
    return {
        "file": str(path),
        "size": path.stat().st_size,
        "architecture": arch,
        "name": _field(reader, "general.name"),
        "layers": layers,
        "positions": positions(layers) if arch == "baichuan" else None,
        "context": _field(reader, f"{arch}.context_length"),
        "embedding": _field(reader, f"{arch}.embedding_length"),
        "heads": _field(reader, f"{arch}.attention.head_count"),
        "quant": quant,
        "tensors": len(reader.tensors),
        "vocab": len(tokens),
        "chat_markers": markers,
        "add_bos_token": _field(reader, "tokenizer.ggml.add_bos_token"),
        "made_by": f"orch {_field(reader, 'orch.version')}" if _field(reader, "orch.version") else None,
    }


def verdicts(path: Path, *, generation: int | None = None, tokenizer: Path | None = None) -> list[Verdict]:
    """Whether a Baichuan GGUF was converted right: NormHead, chat markers, space prefix, position encoding, template."""
    path = Path(path)
    reader = _reader(path)
    arch = _field(reader, "general.architecture")
    if arch != "baichuan":
        return [Verdict("architecture", FAIL, f"{arch!r}, not baichuan: these checks are for Baichuan GGUFs")]
    tokens = _field(reader, "tokenizer.ggml.tokens") or []
    gen, how = _generation(reader, len(tokens), generation)
    out = [Verdict("generation", PASS if gen else UNKNOWN, how)]
    out.append(_normhead(reader, gen))
    out.append(_markers(reader, path, tokens))
    out.append(_space_prefix(reader, gen, tokenizer))
    layers = _field(reader, "baichuan.block_count")
    pos = positions(layers)
    out.append(Verdict("positions", PASS, f"{layers} layers: llama.cpp's {'7B graph, RoPE' if pos == 'rope' else '13B graph, ALiBi'}")
               if pos != "none" else
               Verdict("positions", FAIL, f"{layers} layers: llama.cpp's baichuan graph knows 32 (RoPE) and 40 (ALiBi) only and runs "
                                          "any other count with no position encoding at all"))
    out.append(Verdict("chat template", PASS, "present in the GGUF") if _field(reader, "tokenizer.chat_template") else
               Verdict("chat template", WARN, "none in the GGUF: Ollama then needs a Modelfile TEMPLATE (orch build writes one)"))
    return out


def _generation(reader, vocab: int, override: int | None) -> tuple[int | None, str]:
    if override is not None:
        return override, f"Baichuan {override} (--generation)"
    if (recorded := _field(reader, "orch.baichuan.generation")) is not None:
        return int(recorded), f"Baichuan {recorded}, as orch recorded when it built this GGUF"
    if vocab in VOCAB_GENERATION:
        return VOCAB_GENERATION[vocab], f"Baichuan {VOCAB_GENERATION[vocab]}, from its {vocab}-piece vocabulary"
    return None, f"cannot be told ({vocab}-piece vocabulary, no orch metadata): pass --generation 1 or 2"


def _normhead(reader, gen: int | None) -> Verdict:
    """Dequantize output.weight a block of rows at a time: Baichuan 2's rows must have unit norm (NormHead applied)."""
    import numpy as np
    from gguf import dequantize

    tensor = next((t for t in reader.tensors if t.name == "output.weight"), None)
    if tensor is None:
        return Verdict("NormHead", FAIL, "no output.weight in the GGUF")
    rows = tensor.data.shape[0]
    norms = np.concatenate([np.linalg.norm(dequantize(tensor.data[i:i + 4096], tensor.tensor_type).astype(np.float64), axis=1)
                            for i in range(0, rows, 4096)])
    off = np.abs(norms - 1.0)
    unit = float(np.median(off)) < 0.01 and float(np.quantile(off, 0.99)) < 0.05
    summary = f"output.weight row norms: median {np.median(norms):.4f}, from {norms.min():.3g} to {norms.max():.3g}"
    if gen == 1:
        return Verdict("NormHead", PASS, f"not used by Baichuan 1 ({summary})")
    if unit:
        return Verdict("NormHead", PASS, f"applied: {summary}")
    caveat = "" if gen == 2 else " (if this is Baichuan 1, which has no NormHead, pass --generation 1)"
    return Verdict("NormHead", FAIL, f"NOT applied: {summary}; Baichuan 2 normalises these rows at inference, so this GGUF "
                                     f"answers differently from the model{caveat}: rebuild it with orch build")


def _markers(reader, path: Path, tokens: list[str]) -> Verdict:
    types = _field(reader, "tokenizer.ggml.token_type") or []
    recorded = _field(reader, "orch.chat.marker_ids")
    ids = list(recorded) if recorded else [tokens.index(p) for p in MARKER_PIECES if p in tokens]
    if not ids:
        return Verdict("chat markers", WARN, "no <reserved_106>/<reserved_107> in the vocabulary: a base model, or not Baichuan 2's")
    from gguf import TokenType

    untyped = [f"{tokens[i]} typed {TokenType(types[i]).name}" for i in ids if types[i] != CONTROL]
    split = {tokens[i]: got for i, got in zip(ids, _tokenize(path, [tokens[i] for i in ids])) if got != [i]}
    if untyped or split:
        what = [f"{', '.join(untyped)}, not CONTROL"] if untyped else []
        what += [f"{piece} tokenises to {got[:6]}{'…' if len(got) > 6 else ''}" for piece, got in split.items()]
        return Verdict("chat markers", FAIL, f"{'; '.join(what)}: no chat template can produce the markers, so every chat "
                                             "reads as plain text: rebuild it with orch build")
    return Verdict("chat markers", PASS, f"{', '.join(f'{tokens[i]} = {i}' for i in ids)}: typed CONTROL, single tokens")


def _tokenize(path: Path, pieces: list[str]) -> list[list[int]]:
    """Each piece as llama.cpp tokenises it with special tokens parsed (the vocabulary loaded once, no weights)."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        return [llm.tokenize(piece.encode(), add_bos=False, special=True) for piece in pieces]
    finally:
        llm.close()


def _space_prefix(reader, gen: int | None, tokenizer: Path | None) -> Verdict:
    flag = _field(reader, "tokenizer.ggml.add_space_prefix")
    effective = True if flag is None else bool(flag)  # llama.cpp assumes SentencePiece's dummy prefix when the key is absent
    shown = f"add_space_prefix {'unset (llama.cpp then adds the space)' if flag is None else str(bool(flag)).lower()}"
    if tokenizer is not None:
        from orchestrator.builder.sentencepiece_model import SentencePieceModel

        expected, source = SentencePieceModel.read(tokenizer).add_dummy_prefix, f"{tokenizer}"
    elif (recorded := _field(reader, "orch.tokenizer.add_dummy_prefix")) is not None:
        expected, source = bool(recorded), "the tokenizer orch built it from"
    elif gen == 2:
        expected, source = False, "Baichuan 2's tokenizer, which adds no dummy prefix"
    else:
        return Verdict("space prefix", UNKNOWN, f"{shown}; the tokenizer's own setting is unknown: pass --tokenizer tokenizer.model")
    if effective == expected:
        return Verdict("space prefix", PASS, f"{shown}, as {source} does")
    return Verdict("space prefix", FAIL, f"{shown}, but {source} {'adds' if expected else 'adds no'} dummy prefix: every turn's "
                                         "text is tokenised with a stray or missing '▁': rebuild it with orch build")


def as_dicts(items: list[Verdict]) -> list[dict]:
    return [asdict(v) for v in items]
