"""Baichuan2's NormHead: the output head whose rows are L2-normalised at inference.

llama.cpp's converter copies `lm_head.weight` as stored, so a GGUF made by it
alone gives other logits than the model. Only that one tensor has to change:
orch normalises it while the converter streams it (the converter's tensors are
lazy), so the checkpoint is neither rewritten nor loaded whole.
"""

from __future__ import annotations

from pathlib import Path

BAICHUAN2_VOCAB = 125696


def normalize_rows(weight):
    """Rows of `weight` scaled to unit L2 norm, in float32, as `F.normalize(w)` (eps 1e-12) does."""
    import torch

    w = weight.to(torch.float32, copy=True)
    return w.div_(torch.linalg.vector_norm(w, dim=1, keepdim=True).clamp_min(1e-12))  # in place: one float32 copy, not two


def detect_generation(model_dir: Path, config: dict) -> tuple[int, str]:
    """Baichuan 2 (NormHead) or Baichuan 1 (none), with the evidence, read without executing anything."""
    modeling = Path(model_dir) / "modeling_baichuan.py"
    if modeling.is_file():
        text = modeling.read_text(encoding="utf-8", errors="replace")
        if "NormHead" in text:
            return 2, "modeling_baichuan.py defines NormHead"
        return 1, "modeling_baichuan.py has no NormHead"
    if "z_loss_weight" in config:
        return 2, "config.json has z_loss_weight (Baichuan 2)"
    if config.get("vocab_size") == BAICHUAN2_VOCAB:
        return 2, f"vocab_size {BAICHUAN2_VOCAB} (Baichuan 2)"
    return 1, "no Baichuan 2 marker in config.json (Baichuan 1)"
