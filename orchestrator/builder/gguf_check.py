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


MAX_VOCAB = 1 << 20  # Baichuan's is 125,696 and the largest vocabularies in use about 260,000
MAX_ARRAY_ITEMS = 4 << 20  # every array of the metadata together
MAX_KV = 10_000


def open_gguf(path: Path):
    """The GGUF's reader, once its metadata has been bounded (a 24 MB file of 2 million empty tokens took 84 s and 4.6 GB)."""
    from gguf import GGUFReader

    path = Path(path)
    if path.is_dir():
        raise BadInput(f"{path} is a directory: give one of its .gguf files (orch inspect {path}/NAME.gguf)")
    if not path.is_file():
        raise BadInput(f"{path} does not exist: give the path of a .gguf file")
    _bound_metadata(path)
    try:
        reader = GGUFReader(str(path))
    except Exception as e:  # noqa: BLE001  gguf raises ValueError, IndexError, struct errors ... for foreign or cut files
        raise BadInput(f"{path} is not a whole GGUF file ({type(e).__name__}): it is cut short or not a GGUF; download it again") from None
    reader.orch_path = path
    return reader


def _bound_metadata(path: Path) -> None:
    """Walk the metadata's headers (keys, types, array lengths) before gguf parses it, refusing absurd counts."""
    import struct

    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUF's scalar value types
    with open(path, "rb") as f:
        def read(fmt: str):
            data = f.read(struct.calcsize(fmt))
            if len(data) != struct.calcsize(fmt):
                raise BadInput(f"{path} is cut short in its metadata: download it again")
            return struct.unpack(fmt, data)[0]

        def skip_string() -> int:
            n = read("<Q")
            if n > 1 << 24:
                raise BadInput(f"{path} holds a string of {n} bytes in its metadata: not a GGUF orch can judge")
            f.seek(n, 1)
            return n

        if f.read(4) != b"GGUF":
            raise BadInput(f"{path} is not a GGUF file (no GGUF magic): check the path")
        version, _, n_kv = read("<I"), read("<Q"), read("<Q")  # the tensor count is gguf's to check
        if version < 2 or n_kv > MAX_KV:
            raise BadInput(f"{path} declares GGUF version {version} with {n_kv} metadata keys: not a GGUF orch can judge")
        items = 0
        for _ in range(n_kv):
            key_len = read("<Q")
            if key_len > 1 << 16:
                raise BadInput(f"{path} has a metadata key of {key_len} bytes: not a GGUF orch can judge")
            key = f.read(key_len).decode("utf-8", errors="replace")
            kind = read("<I")
            if kind == 8:
                skip_string()
            elif kind == 9:
                item_kind, count = read("<I"), read("<Q")
                items += count
                if (key == "tokenizer.ggml.tokens" and count > MAX_VOCAB) or items > MAX_ARRAY_ITEMS:
                    raise BadInput(f"{path}: {key} holds {count} entries, beyond any model's vocabulary: not a GGUF orch can judge")
                if item_kind == 8:
                    for _ in range(count):
                        skip_string()
                elif item_kind in sizes:
                    f.seek(sizes[item_kind] * count, 1)
                else:
                    raise BadInput(f"{path}: {key} is an array of an unknown type {item_kind}: a malformed GGUF")
            elif kind in sizes:
                f.seek(sizes[kind], 1)
            else:
                raise BadInput(f"{path}: {key} has an unknown value type {kind}: a malformed GGUF")


def _field(reader, key: str):
    f = reader.get_field(key)
    return None if f is None else f.contents()


def _malformed(reader, key: str, value, want: str) -> BadInput:
    return BadInput(f"{reader.orch_path}: {key} is {str(value)[:40]!r}, not {want}: a malformed GGUF; get it again from its source")


def _int(reader, key: str) -> int | None:
    value = _field(reader, key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise _malformed(reader, key, value, "a whole number")
    return value


def _vocabulary(reader) -> tuple[list[str], list[int]]:
    """The tokens and their types, checked to match one for one and to be types llama.cpp knows."""
    from gguf import TokenType

    tokens = _field(reader, "tokenizer.ggml.tokens") or []
    types = _field(reader, "tokenizer.ggml.token_type") or []
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise _malformed(reader, "tokenizer.ggml.tokens", type(tokens).__name__, "a list of strings")
    if types and len(types) != len(tokens):
        raise BadInput(f"{reader.orch_path} has {len(types)} token types for {len(tokens)} tokens: a malformed GGUF; get it again "
                       "from its source")
    known = {t.value for t in TokenType}
    if unknown := next((t for t in types if t not in known), None):
        raise _malformed(reader, "tokenizer.ggml.token_type", unknown, f"one of llama.cpp's token types {sorted(known)}")
    return tokens, types


def inspect_gguf(reader) -> dict:
    """What the GGUF holds (`reader` from open_gguf: the file is parsed once for this and the verdicts)."""
    from gguf import LlamaFileType

    path = reader.orch_path
    arch = _field(reader, "general.architecture")
    tokens, types = _vocabulary(reader)
    special = {_int(reader, f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "unknown", "padding")}
    markers = {tokens[i]: i for i, t in enumerate(types) if t == CONTROL and i not in special}
    ftype = _field(reader, "general.file_type")
    try:
        quant = LlamaFileType(ftype).name.replace("MOSTLY_", "").replace("ALL_", "") if ftype is not None else None
    except ValueError:
        quant = str(ftype)
    layers = _int(reader, f"{arch}.block_count")
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


def verdicts(reader, *, generation: int | None = None, tokenizer: Path | None = None) -> list[Verdict]:
    """Whether a Baichuan GGUF was converted right: NormHead, chat markers, space prefix, position encoding, template."""
    path = reader.orch_path
    arch = _field(reader, "general.architecture")
    if arch != "baichuan":
        return [Verdict("architecture", FAIL, f"{arch!r}, not baichuan: these checks are for Baichuan GGUFs")]
    tokens, _ = _vocabulary(reader)
    gen, how = _generation(reader, len(tokens), generation)
    out = [Verdict("generation", PASS if gen else UNKNOWN, how)]
    out.append(_normhead(reader, gen))
    out.append(_markers(reader, path, tokens))
    out.append(_space_prefix(reader, gen, tokenizer))
    layers = _int(reader, "baichuan.block_count")
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
    if len(tensor.data.shape) != 2:
        return Verdict("NormHead", FAIL, f"output.weight has shape {list(tensor.data.shape)}, not a matrix: a malformed GGUF")
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
    _, types = _vocabulary(reader)
    recorded = _field(reader, "orch.chat.marker_ids")
    ids = list(recorded) if recorded else [tokens.index(p) for p in MARKER_PIECES if p in tokens]
    if not all(isinstance(i, int) and 0 <= i < len(tokens) and i < len(types) for i in ids):
        return Verdict("chat markers", FAIL, f"orch.chat.marker_ids {ids[:4]} are not ids of this {len(tokens)}-token vocabulary: "
                                             "a malformed GGUF")
    if not ids:
        return Verdict("chat markers", WARN, "no <reserved_106>/<reserved_107> in the vocabulary: a base model, or not Baichuan 2's")
    from gguf import TokenType

    untyped = [f"{tokens[i]} typed {TokenType(types[i]).name}" for i in ids if types[i] != CONTROL]
    try:
        tokenized = _tokenize(path, [tokens[i] for i in ids])
    except ValueError:  # llama-cpp-python's word for a GGUF llama.cpp refuses to load
        return Verdict("chat markers", FAIL, "llama.cpp cannot load this GGUF's vocabulary, so it cannot be asked how the markers "
                                             "tokenise: a malformed GGUF")
    split = {tokens[i]: got for i, got in zip(ids, tokenized) if got != [i]}
    if untyped or split:
        what = [f"{', '.join(untyped)}, not CONTROL"] if untyped else []
        what += [f"{piece} tokenises to {got[:6]}{'…' if len(got) > 6 else ''}" for piece, got in split.items()]
        return Verdict("chat markers", FAIL, f"{'; '.join(what)}: no chat template can produce the markers, so every chat "
                                             "reads as plain text: rebuild it with orch build")
    return Verdict("chat markers", PASS, f"{', '.join(f'{tokens[i]} = {i}' for i in ids)}: typed CONTROL, single tokens")


def _tokenize(path: Path, pieces: list[str]) -> list[list[int]]:
    """Each piece as llama.cpp tokenises it with special tokens parsed (the vocabulary alone, no weights), asked in a child
    process: llama.cpp's own log lines (n_ctx_train ...) stay out of orch's output, and a crash in it is a failed verdict."""
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", __name__, str(path), json.dumps(pieces)], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise ValueError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}")
    answer = next((line for line in reversed(proc.stdout.splitlines()) if line.startswith("[")), None)  # llama.cpp may print too
    if answer is None:
        raise ValueError("llama.cpp gave no tokens")
    return json.loads(answer)


def _tokenize_here(path: Path, pieces: list[str]) -> list[list[int]]:
    from orchestrator.builder.llamacpp.runtime import bindings

    llm = bindings().Llama(model_path=str(path), vocab_only=True, verbose=False)
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


if __name__ == "__main__":  # the child of _tokenize: python -m orchestrator.builder.gguf_check GGUF PIECES_JSON
    import json
    import sys

    print(json.dumps(_tokenize_here(Path(sys.argv[1]), json.loads(sys.argv[2]))))
