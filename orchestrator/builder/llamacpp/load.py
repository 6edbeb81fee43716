"""Load a GGUF into llama-cpp-python the way every check of orch's does: weights read from the mapped file, no repacking.

llama.cpp's CPU "extra buffer types" copy quantized weights into another
layout (AVX2/AVX-512 repacking, AMX tiles). For a check of a few hundred tokens
that only costs memory (3.3 GB at 7B), it makes the figures depend on which
CPU computed them, and the AMX layout crashes where its code was miscompiled
(cpu.py). llama-cpp-python's Llama takes no flag for it, so its model defaults
are adjusted for the load.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path


def load(gguf: Path, *, repack: bool = False, **kwargs):
    """A llama_cpp.Llama for `gguf` (orch's compile, runtime.py); `kwargs` go to Llama (n_ctx, logits_all, ...),
    threads default to every core."""
    kwargs.setdefault("n_threads", os.cpu_count() or 1)
    kwargs.setdefault("verbose", False)
    from orchestrator.builder.llamacpp.runtime import bindings

    llama_cpp = bindings()
    with _repacking(llama_cpp.llama_cpp, repack):
        return llama_cpp.Llama(model_path=str(gguf), **kwargs)


def scoring(gguf: Path, n_tokens: int):
    """The settings the quality report scores with (and a test that checks its figures must use): all logits, one batch."""
    return load(gguf, n_ctx=n_tokens + 8, n_batch=min(512, n_tokens), logits_all=True)


SCORING_CHUNK = 128


def score_all(llm, tokens: list[int], on_tokens=None) -> None:
    """Evaluate `tokens` SCORING_CHUNK at a time, so that a caller can count them; the report and its test use the same chunks."""
    for i in range(0, len(tokens), SCORING_CHUNK):
        chunk = tokens[i:i + SCORING_CHUNK]
        llm.eval(chunk)
        if on_tokens is not None:
            on_tokens(len(chunk))


@contextmanager
def _repacking(native, on: bool):
    defaults = native.llama_model_default_params

    def params():
        p = defaults()
        p.use_extra_bufts = on
        return p

    native.llama_model_default_params = params
    try:
        yield
    finally:
        native.llama_model_default_params = defaults
