"""Load each GGUF with llama.cpp, prove the chat markers are single tokens, generate a few tokens.

The build runs it in a child process (`python -m orchestrator.builder.verify
REQUEST RESULT`, through in_child), like every other llama.cpp job: llama.cpp's
memory never joins the build's, and a crash in it is one line, not the build's end.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from orchestrator.builder.chat_format import ChatMarkers, build_chat_input
from orchestrator.errors import OrchError
from orchestrator.events import SILENT, Reporter
from orchestrator.files import atomic_path

SMOKE_PROMPT = "你好，请介绍一下你自己。"


def verify(gguf: Path, *, layers: int, markers: ChatMarkers | None, tokenizer: Path | None = None, eos_id: int = 2,
           n_tokens: int = 8) -> dict:
    """Refuse a GGUF that is not the model, cannot produce its chat markers, or tokenises prompts differently."""
    from orchestrator.builder.llamacpp.load import load

    llm = load(gguf, n_ctx=256)
    try:
        meta = llm.metadata
        if meta.get("general.architecture") != "baichuan" or int(meta.get("baichuan.block_count", -1)) != layers:
            raise OrchError(f"{gguf.name} is not a {layers}-layer baichuan GGUF "
                            f"({meta.get('general.architecture')}, {meta.get('baichuan.block_count')} layers): rebuild with --force")

        found = {}
        if markers is not None:
            for piece, tid in ((markers.user_piece, markers.user_id), (markers.assistant_piece, markers.assistant_id)):
                got = llm.tokenize(piece.encode(), add_bos=False, special=True)
                if got != [tid]:
                    raise OrchError(f"{gguf.name}: chat marker {piece} tokenises to {got[:6]}{'…' if len(got) > 6 else ''}, "
                                    f"not the single token {tid}, so no chat template can work: rebuild with --force")
                found[piece] = tid
            prompt = llm.tokenize(f"{markers.user_piece}{SMOKE_PROMPT}{markers.assistant_piece}".encode(), add_bos=False, special=True)
        else:
            prompt = llm.tokenize(SMOKE_PROMPT.encode(), add_bos=False, special=False)
        if tokenizer is not None:
            _same_as_sentencepiece(gguf, prompt, tokenizer, markers)

        llm.eval(prompt)  # the next-token scores must be numbers: inf or NaN weights (a runaway adapter scale) poison them all
        import numpy as np

        from orchestrator.builder.llamacpp.runtime import bindings

        llama_cpp = bindings()

        scores = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
        if not np.isfinite(scores).all():
            raise OrchError(f"{gguf.name}: the model's next-token scores are not finite numbers, so its weights hold inf or NaN: "
                            "check the checkpoint (and the adapter's lora_alpha and r) and rebuild with --force")
        generated: list[int] = []
        for token in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
            if token == eos_id or len(generated) >= n_tokens:
                break
            generated.append(token)
        return {
            "markers": found,
            "prompt_tokens": len(prompt),
            "generated_tokens": len(generated),
            "sample": llm.detokenize(generated).decode("utf-8", errors="replace"),
        }
    finally:
        llm.close()


def _same_as_sentencepiece(gguf: Path, got: list[int], tokenizer: Path, markers: ChatMarkers | None) -> None:
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor(model_file=str(tokenizer))
    if markers is not None:
        want = build_chat_input([{"role": "user", "content": SMOKE_PROMPT}], sp.encode, markers)
    else:
        want = sp.encode(SMOKE_PROMPT)
    if got != want:
        raise OrchError(f"{gguf.name}: a prompt tokenises to {got[:8]}… in llama.cpp but {want[:8]}… in the model's own "
                        "tokenizer, so the model would read every prompt differently: rebuild with --force")


def in_child(gguf: Path, *, layers: int, markers: ChatMarkers | None, tokenizer: Path | None, eos_id: int, work: Path,
             reporter: Reporter = SILENT) -> dict:
    """verify() in a child process; its refusal comes back as the same one-line OrchError."""
    from orchestrator.builder.llamacpp.process import run_watched

    request = work / f"verify-{gguf.name}.json"
    request.write_text(json.dumps({"gguf": str(gguf), "layers": layers, "eos_id": eos_id, "tokenizer": str(tokenizer) if tokenizer else None,
                                   "markers": dataclasses.asdict(markers) if markers else None}))
    result = work / f"verify-{gguf.name}.result.json"
    with atomic_path(result) as tmp:
        run_watched([sys.executable, "-m", __name__, str(request), str(tmp)], watch=None, expected_bytes=None,
                    what=f"verify {gguf.name}", log=work / "logs" / f"verify-{gguf.name}.log", reporter=reporter)
    answer = json.loads(result.read_text())
    request.unlink(missing_ok=True)
    result.unlink(missing_ok=True)
    if "error" in answer:
        raise OrchError(answer["error"])
    return answer


def main(argv: list[str]) -> int:
    job = json.loads(Path(argv[0]).read_text())
    try:
        answer = verify(Path(job["gguf"]), layers=job["layers"], markers=ChatMarkers(**job["markers"]) if job["markers"] else None,
                        tokenizer=Path(job["tokenizer"]) if job["tokenizer"] else None, eos_id=job["eos_id"])
    except OrchError as e:
        answer = {"error": str(e)}
    Path(argv[1]).write_text(json.dumps(answer, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
