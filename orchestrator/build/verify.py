"""Stage 5: load each GGUF with llama.cpp, prove the chat markers are single tokens, generate a few tokens."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from orchestrator.errors import OrchError
from orchestrator.build.chat_format import ChatMarkers, build_chat_input

SMOKE_PROMPT = "你好，请介绍一下你自己。"


def verify(gguf: Path, *, layers: int, markers: ChatMarkers | None, tokenizer: Path | None = None, eos_id: int = 2,
           n_tokens: int = 8) -> dict:
    """Refuse a GGUF that is not the model, cannot produce its chat markers, or tokenises prompts differently."""
    with without_repacking():
        from llama_cpp import Llama

        llm = Llama(model_path=str(gguf), n_ctx=256, n_threads=os.cpu_count() or 1, verbose=False)
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


@contextmanager
def without_repacking():
    """Load weights straight from the mapped file, without llama.cpp's CPU repacking into anonymous memory.

    Repacking speeds up long CPU runs by copying the quantized weights into
    another layout: for a check of a few tokens it only costs memory (3.3 GB at
    7B, the largest anything in a build held). llama-cpp-python's Llama takes
    no flag for it, so its model defaults are adjusted for the load.
    """
    import llama_cpp.llama_cpp as native

    defaults = native.llama_model_default_params

    def no_extra_buffers():
        params = defaults()
        params.use_extra_bufts = False
        return params

    native.llama_model_default_params = no_extra_buffers
    try:
        yield
    finally:
        native.llama_model_default_params = defaults


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
