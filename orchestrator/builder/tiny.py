"""Tiny Baichuan-shaped checkpoints, made locally and offline.

Narrow but with the real layer counts (32: the 7B graph with RoPE, 40: the 13B
graph with ALiBi), because llama.cpp picks the graph by layer count. The
tokenizer is a SentencePiece BPE trained here, with the chat markers as
user-defined pieces exactly as in the released vocab: that is what trips the
converter. The markers deliberately sit at ids other than the released 195/196,
so code that hard-codes those ids fails on a tiny model.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RESERVED_RANGE = range(100, 112)  # <reserved_100> .. <reserved_111>; 106/107 are the chat markers
TOKENIZER_PIECES = 1024
USER_PIECE = "<reserved_106>"
ASSISTANT_PIECE = "<reserved_107>"
MAX_NEW_TOKENS = 48  # random weights never say EOS: a reply is as long as this allows (the released models allow 2048)


@dataclass(frozen=True)
class TinyShape:
    layers: int = 32
    hidden: int = 256
    heads: int = 4
    ffn: int = 512
    vocab: int = 1024

    @classmethod
    def for_layers(cls, layers: int) -> "TinyShape":
        if layers == 40:
            # 5 heads: ALiBi slopes for a head count that is not a power of two, as in the 13B
            return cls(layers=40, hidden=160, heads=5, ffn=320)
        return cls(layers=layers)


_EN = (
    "the model answers questions about weather travel food history science music and code "
    "a small team runs a private server with one gpu and a browser chat for everyone "
    "please explain how tokenizers split text into pieces and why markers matter "
    "good morning what is the capital of france paris is the capital of france "
    "write a short poem about rivers mountains and the quiet night sky"
).split()
_ZH = (
    "你好 今天 天气 很好 我们 一起 去 公园 散步 吧 北京 是 中国 的 首都 "
    "请 介绍 一下 你 自己 我 是 一个 人工智能 助手 可以 回答 问题 "
    "模型 量化 以后 仍然 能够 正确 回答 中文 问题 谢谢 再见 学习 工作 生活 "
    "春天 夏天 秋天 冬天 山 水 花 鸟 月亮 太阳 星星 朋友 家人 老师 学生"
).split()


def _corpus(seed: int = 0, lines: int = 4000) -> list[str]:
    rng = random.Random(seed)
    out = []
    for i in range(lines):
        if i % 2:
            out.append(" ".join(rng.choice(_EN) for _ in range(rng.randint(4, 14))) + rng.choice([".", "?", "!"]))
        else:
            out.append("".join(rng.choice(_ZH) for _ in range(rng.randint(3, 10))) + rng.choice(["。", "？", "！"]))
    out.append(" ".join(str(n) for n in range(100)))
    return out


def train_tokenizer(vocab_size: int = 1024, seed: int = 0, dummy_prefix: bool = False) -> bytes:
    """A Baichuan2-like SentencePiece BPE model: byte fallback, identity normalisation, and no dummy prefix unless asked.

    Baichuan 2's tokenizer adds no "▁" before a text; Baichuan 1 lineage and
    fine-tunes that retrain one may (SentencePiece's own default).
    """
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus(seed)),
        model_writer=buf,
        model_type="bpe",
        vocab_size=vocab_size,
        character_coverage=1.0,
        byte_fallback=True,
        add_dummy_prefix=dummy_prefix,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        split_digits=True,
        allow_whitespace_only_pieces=True,
        user_defined_symbols=[f"<reserved_{i}>" for i in RESERVED_RANGE],
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    return buf.getvalue()


def _weights(shape: TinyShape, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    h, f, v = shape.hidden, shape.ffn, shape.vocab

    def mat(rows: int, cols: int) -> np.ndarray:
        return rng.normal(0.0, 1.0 / np.sqrt(cols), size=(rows, cols)).astype(np.float32)

    def norm(n: int) -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    w = {"model.embed_tokens.weight": rng.normal(0.0, 1.0, size=(v, h)).astype(np.float32)}
    for i in range(shape.layers):
        p = f"model.layers.{i}."
        w[p + "self_attn.W_pack.weight"] = mat(3 * h, h)
        w[p + "self_attn.o_proj.weight"] = mat(h, h) * 0.5
        w[p + "mlp.gate_proj.weight"] = mat(f, h)
        w[p + "mlp.up_proj.weight"] = mat(f, h)
        w[p + "mlp.down_proj.weight"] = mat(h, f) * 0.5
        w[p + "input_layernorm.weight"] = norm(h)
        w[p + "post_attention_layernorm.weight"] = norm(h)
    w["model.norm.weight"] = norm(h)
    # rows of very unequal norm, so that a GGUF without NormHead ranks tokens differently
    head = rng.normal(0.0, 1.0, size=(v, h)).astype(np.float32)
    w["lm_head.weight"] = head * np.exp(rng.uniform(-2.0, 2.0, size=(v, 1))).astype(np.float32)
    return w


def _config(shape: TinyShape, generation: int, dtype: str) -> dict:
    cfg = {
        "architectures": ["BaichuanForCausalLM" if generation == 2 or shape.layers == 40 else "BaiChuanForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_baichuan.BaichuanConfig",
            "AutoModelForCausalLM": "modeling_baichuan.BaichuanForCausalLM",
        },
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "hidden_act": "silu",
        "hidden_size": shape.hidden,
        "initializer_range": 0.02,
        "intermediate_size": shape.ffn,
        "model_max_length": 4096,
        "model_type": "baichuan",
        "num_attention_heads": shape.heads,
        "num_hidden_layers": shape.layers,
        "rms_norm_eps": 1e-06,
        "tie_word_embeddings": False,
        "tokenizer_class": "BaichuanTokenizer",
        "torch_dtype": dtype,
        "use_cache": True,
        "vocab_size": shape.vocab,
    }
    if shape.layers != 40:  # the 13B config has model_max_length only
        cfg["max_position_embeddings"] = 4096
    if generation == 2:
        cfg["z_loss_weight"] = 0
    return cfg


def make_tiny_checkpoint(
    dest: Path,
    layers: int = 32,
    *,
    fmt: str = "bin",
    dtype: str = "bfloat16",
    generation: int = 2,
    chat: bool = True,
    shards: int = 1,
    seed: int = 0,
    shape: TinyShape | None = None,
    dummy_prefix: bool = False,
) -> Path:
    """Write a tiny Baichuan checkpoint to `dest` (created whole, or not at all).

    `shape` overrides the widths (benchmarks scale the model up); a vocabulary
    wider than the 1024-piece tokenizer is padded, as llama.cpp's converter does.
    """
    import sentencepiece as spm
    import torch

    if fmt not in ("bin", "safetensors"):
        raise ValueError(f"fmt must be 'bin' or 'safetensors', not {fmt!r}")
    shape = shape or TinyShape.for_layers(layers)
    dest = Path(dest)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent if dest.parent.exists() else None))
    tmp.chmod(0o755)  # mkdtemp makes it private; a model directory is not
    try:
        pieces = min(shape.vocab, TOKENIZER_PIECES)
        model = train_tokenizer(pieces, seed, dummy_prefix)
        (tmp / "tokenizer.model").write_bytes(model)
        sp = spm.SentencePieceProcessor(model_proto=model)
        assert sp.vocab_size() == pieces, sp.vocab_size()
        user_id, assistant_id = sp.piece_to_id(USER_PIECE), sp.piece_to_id(ASSISTANT_PIECE)

        _write_json(tmp / "config.json", _config(shape, generation, dtype))
        gen = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "max_new_tokens": MAX_NEW_TOKENS}
        if chat:
            gen |= {
                "user_token_id": user_id,
                "assistant_token_id": assistant_id,
                "do_sample": True,
                "temperature": 0.3,
                "top_k": 5,
                "top_p": 0.85,
                "repetition_penalty": 1.05,
            }
        _write_json(tmp / "generation_config.json", gen)
        _write_json(
            tmp / "tokenizer_config.json",
            {
                "add_bos_token": False,
                "add_eos_token": False,
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "pad_token": "<unk>",
                "model_max_length": 4096,
                "tokenizer_class": "BaichuanTokenizer",
                "auto_map": {"AutoTokenizer": ["tokenization_baichuan.BaichuanTokenizer", None]},
            },
        )
        _write_json(
            tmp / "special_tokens_map.json",
            {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"},
        )

        tdtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[dtype]
        tensors = {k: torch.from_numpy(v).to(tdtype) for k, v in _weights(shape, seed).items()}
        _write_weights(tmp, tensors, fmt, shards)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _write_weights(dirpath: Path, tensors: dict, fmt: str, shards: int) -> None:
    import torch

    names = list(tensors)
    groups = [names[i::shards] for i in range(shards)] if shards > 1 else [names]
    prefix, ext = ("pytorch_model", "bin") if fmt == "bin" else ("model", "safetensors")
    weight_map = {}
    for i, group in enumerate(groups, 1):
        fname = f"{prefix}.{ext}" if shards == 1 else f"{prefix}-{i:05d}-of-{shards:05d}.{ext}"
        part = {n: tensors[n].contiguous() for n in group}
        if fmt == "bin":
            torch.save(part, dirpath / fname)
        else:
            from safetensors.torch import save_file

            save_file(part, str(dirpath / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in group})
    if shards > 1:
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        _write_json(dirpath / f"{prefix}.{ext}.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
