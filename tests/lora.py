"""PEFT-format LoRA adapters made locally for a tiny checkpoint: adapter_config.json and adapter_model.safetensors (or .bin)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from orchestrator.builder.checkpoint import read, tensor_shapes


def make_lora(dest: Path, base: Path, *, targets: tuple[str, ...] = ("W_pack",), r: int = 4, alpha: int = 8, rslora: bool = False,
              fan_in_fan_out: bool = False, fmt: str = "safetensors", seed: int = 1, dtype=torch.float32, config: dict | None = None,
              shapes: dict | None = None, strength: float = 1.0) -> Path:
    """An adapter whose deltas are about as large as the weights they change (`strength` times), so a build without it
    answers visibly differently while the merged model stays within float16's range."""
    ck = read(base)
    shapes = shapes or tensor_shapes(base, ck.weight_format, list(ck.weight_files))
    gen = torch.Generator().manual_seed(seed)
    scale = alpha / r ** 0.5 if rslora else alpha / r
    b_std = strength / (scale * r ** 0.5)  # (B @ A) * scale then has about the weights' spread, 1/sqrt(in)
    tensors = {}
    for name, shape in shapes.items():
        module = name.removesuffix(".weight")
        if not name.endswith(".weight") or module.rsplit(".", 1)[-1] not in targets:
            continue
        out_dim, in_dim = shape
        a = torch.randn(r, in_dim, generator=gen) / in_dim ** 0.5
        b = torch.randn(out_dim, r, generator=gen) * b_std
        if fan_in_fan_out:  # PEFT's factors for a Conv1D-style layer, whose weight is stored transposed
            a, b = torch.randn(r, out_dim, generator=gen) / out_dim ** 0.5, torch.randn(in_dim, r, generator=gen) * b_std
        tensors[f"base_model.model.{module}.lora_A.weight"] = a.to(dtype).contiguous()
        tensors[f"base_model.model.{module}.lora_B.weight"] = b.to(dtype).contiguous()
    dest.mkdir(parents=True, exist_ok=True)
    cfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha, "lora_dropout": 0.05, "bias": "none",
           "target_modules": list(targets), "use_rslora": rslora, "fan_in_fan_out": fan_in_fan_out, "use_dora": False,
           "base_model_name_or_path": str(base), "inference_mode": True} | (config or {})
    (dest / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(tensors, str(dest / "adapter_model.safetensors"), metadata={"format": "pt"})
    else:
        torch.save(tensors, dest / "adapter_model.bin")
    return dest
