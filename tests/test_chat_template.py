"""The Modelfile's TEMPLATE, rendered as Ollama renders it and tokenised by the GGUF, gives Baichuan2's exact prompt ids."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import sentencepiece as spm

from orchestrator.builder.chat_format import ChatMarkers, build_chat_input
from orchestrator.builder.llamacpp.runtime import bindings
from orchestrator.builder.tiny import ASSISTANT_PIECE, USER_PIECE

CONVERSATIONS = {
    "one turn": [{"role": "user", "content": "你好，请介绍一下你自己。"}],
    "several turns": [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "和北京比呢？"},
        {"role": "assistant", "content": "北京更大。"},
        {"role": "user", "content": "Thanks!"},
    ],
    "system and one turn": [
        {"role": "system", "content": "You are a concise assistant. 请用中文回答。"},
        {"role": "user", "content": "Hello"},
    ],
    "system and several turns": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "two"},
        {"role": "user", "content": "three"},
    ],
}


def template_of(modelfile: str) -> str:
    return re.search(r'^TEMPLATE """(.*?)"""$', modelfile, re.S | re.M).group(1)


def render(go_render, template: str, messages: list[dict], system: str = "") -> str:
    req = {"template": template, "system": system, "messages": messages}
    return subprocess.run([str(go_render)], input=json.dumps(req), capture_output=True, text=True, check=True).stdout


TOKENIZERS = {"baichuan2 (no dummy prefix)": {}, "dummy prefix (Baichuan 1 lineage)": {"dummy_prefix": True}}


@pytest.fixture(scope="module", params=list(TOKENIZERS))
def model(request, built, checkpoint):
    """The Q4_K_M build of a tiny chat model, for each kind of tokenizer a checkpoint comes with."""
    kind = TOKENIZERS[request.param]
    out = built(32, **kind) if not kind else built(32, "f32,q4_K_M", **kind)  # the fidelity test's dummy-prefix build
    gguf = next(out.glob("*.Q4_K_M.gguf"))
    llm = bindings().Llama(model_path=str(gguf), n_ctx=64, vocab_only=True, verbose=False)
    sp = spm.SentencePieceProcessor(model_file=str(checkpoint(32, **kind) / "tokenizer.model"))
    markers = ChatMarkers(sp.piece_to_id(USER_PIECE), sp.piece_to_id(ASSISTANT_PIECE), USER_PIECE, ASSISTANT_PIECE)
    yield {"llm": llm, "sp": sp, "markers": markers, "modelfile": gguf.with_suffix(".Modelfile").read_text(),
           "dummy_prefix": bool(kind)}
    llm.close()


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_rendered_template_tokenises_like_baichuan2(model, go_render, name):
    messages = CONVERSATIONS[name]
    llm = model["llm"]
    prompt = render(go_render, template_of(model["modelfile"]), messages)
    add_bos = llm.metadata.get("tokenizer.ggml.add_bos_token") == "true"
    got = llm.tokenize(prompt.encode(), add_bos=add_bos, special=True)
    want = build_chat_input(messages, model["sp"].encode, model["markers"])
    assert got == want, f"rendered prompt {prompt!r}"
    after_markers = [model["sp"].id_to_piece(want[i + 1]) for i, t in enumerate(want[:-1]) if t in model["markers"].ids]
    assert all(p.startswith("\u2581") for p in after_markers) == model["dummy_prefix"], after_markers


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_the_ggufs_own_jinja_template_tokenises_like_baichuan2_too(model, name):
    """For tools that read the GGUF's chat template (llama.cpp's server): the same ids, rendered as llama-cpp-python renders it."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    messages = CONVERSATIONS[name]
    llm = model["llm"]
    template = llm.metadata["tokenizer.chat_template"]
    prompt = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(template).render(
        messages=messages, add_generation_prompt=True)
    assert llm.tokenize(prompt.encode(), add_bos=False, special=True) == build_chat_input(messages, model["sp"].encode, model["markers"])


def test_modelfile_system_prompt_comes_first(model, go_render):
    """A SYSTEM line in the Modelfile reaches the prompt as Baichuan2's system text does."""
    messages = CONVERSATIONS["one turn"]
    prompt = render(go_render, template_of(model["modelfile"]), messages, system="你是百川大模型。")
    got = model["llm"].tokenize(prompt.encode(), add_bos=False, special=True)
    assert got == build_chat_input([{"role": "system", "content": "你是百川大模型。"}, *messages], model["sp"].encode, model["markers"])


def test_modelfile_stops_at_the_user_marker_and_carries_defaults(model):
    text = model["modelfile"]
    assert f'PARAMETER stop "{USER_PIECE}"' in text
    params = dict(re.findall(r"^PARAMETER (\w+) (\S+)$", text, re.M))
    assert params == {"stop": f'"{USER_PIECE}"', "temperature": "0.3", "top_k": "5", "top_p": "0.85",
                      "repeat_penalty": "1.05", "num_ctx": "4096"} | ({"num_predict": params["num_predict"]} if "num_predict" in params else {})
    assert re.search(r"^FROM \./\S+\.Q4_K_M\.gguf$", text, re.M)
    assert re.search(r'^LICENSE """', text, re.M)
