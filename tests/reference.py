"""An independent Baichuan forward pass in numpy float64, read straight from the HF checkpoint.

Written from the model's published architecture (W_pack, RMSNorm, SwiGLU,
RoPE with rotate_half for 7B, ALiBi with Baichuan's interleaved slopes for
13B, NormHead), sharing nothing with the conversion pipeline.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np


def load_weights(model_dir: Path, prefix: str = "pytorch_model") -> dict[str, np.ndarray]:
    import torch

    model_dir = Path(model_dir)
    out: dict[str, np.ndarray] = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        from safetensors.torch import load_file

        out.update({k: v.to(torch.float64).numpy() for k, v in load_file(str(f)).items()})
    if not out:
        for f in sorted(model_dir.glob(f"{prefix}*.bin")):
            sd = torch.load(str(f), map_location="cpu", weights_only=True)
            out.update({k: v.to(torch.float64).numpy() for k, v in sd.items()})
    return out


def _rms(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return w * (x / np.sqrt((x * x).mean(-1, keepdims=True) + eps))


def _interleave(n: int) -> list[float]:
    def power_of_2(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n).is_integer():
        return power_of_2(n)
    closest = 2 ** math.floor(math.log2(n))
    return power_of_2(closest) + _interleave(2 * closest)[0::2][: n - closest]


def _rotate_half(x: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def merge_lora(w: dict[str, np.ndarray], adapter_dir: Path) -> None:
    """PEFT's LoRA merge, in float64, written from PEFT's documented formula: W += (B @ A) * alpha / r (or / sqrt(r))."""
    adapter_dir = Path(adapter_dir)
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    factors = load_weights(adapter_dir, prefix="adapter_model")
    r, alpha = cfg["r"], cfg["lora_alpha"]
    scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    for key, a in factors.items():
        if ".lora_A." not in key:
            continue
        b = factors[key.replace(".lora_A.", ".lora_B.")]
        delta = b @ a * scale
        name = key.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
        w[name] = w[name] + (delta.T if cfg.get("fan_in_fan_out") else delta)


class Reference:
    def __init__(self, model_dir: Path, *, normhead: bool = True, adapter: Path | None = None):
        self.cfg = json.loads((Path(model_dir) / "config.json").read_text())
        self.w = load_weights(model_dir)
        if adapter is not None:
            merge_lora(self.w, adapter)
        head = self.w["lm_head.weight"]
        if normhead:
            head = head / np.maximum(np.linalg.norm(head, axis=1, keepdims=True), 1e-12)
        self.head = head

    def logits(self, tokens: list[int]) -> np.ndarray:
        c, w = self.cfg, self.w
        nh, hid, eps = c["num_attention_heads"], c["hidden_size"], c["rms_norm_eps"]
        hd, t = hid // nh, len(tokens)
        alibi = c["num_hidden_layers"] == 40
        pos = np.arange(t, dtype=np.float64)
        if alibi:
            slopes = np.array(_interleave(nh))[:, None, None]
            bias = slopes * (pos[None, None, :] - pos[None, :, None])
        else:
            inv = 1.0 / (10000.0 ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
            freqs = np.outer(pos, inv)
            emb = np.concatenate([freqs, freqs], axis=-1)
            cos, sin = np.cos(emb)[:, None, :], np.sin(emb)[:, None, :]
            bias = 0.0
        mask = np.triu(np.full((t, t), -np.inf), 1)

        h = w["model.embed_tokens.weight"][tokens]
        for i in range(c["num_hidden_layers"]):
            p = f"model.layers.{i}."
            x = _rms(h, w[p + "input_layernorm.weight"], eps)
            q, k, v = np.split(x @ w[p + "self_attn.W_pack.weight"].T, 3, axis=-1)
            q, k, v = (a.reshape(t, nh, hd) for a in (q, k, v))
            if not alibi:
                q = q * cos + _rotate_half(q) * sin
                k = k * cos + _rotate_half(k) * sin
            scores = np.einsum("qhd,khd->hqk", q, k) / math.sqrt(hd) + bias + mask
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            attn = scores / scores.sum(-1, keepdims=True)
            out = np.einsum("hqk,khd->qhd", attn, v).reshape(t, hid)
            h = h + out @ w[p + "self_attn.o_proj.weight"].T
            x = _rms(h, w[p + "post_attention_layernorm.weight"], eps)
            gate = x @ w[p + "mlp.gate_proj.weight"].T
            up = x @ w[p + "mlp.up_proj.weight"].T
            h = h + (gate / (1.0 + np.exp(-gate)) * up) @ w[p + "mlp.down_proj.weight"].T
        h = _rms(h, w["model.norm.weight"], eps)
        return h @ self.head.T
