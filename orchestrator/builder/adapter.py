"""PEFT LoRA adapters: read and checked against the base before any work, merged tensor by tensor as the base streams.

Baichuan2's own fine-tune script trains LoRA on W_pack; others also target
o_proj, gate_proj, up_proj and down_proj. PEFT saves `adapter_config.json`
and `adapter_model.safetensors` (older PEFT: `adapter_model.bin`) with keys
like `base_model.model.model.layers.3.self_attn.W_pack.lora_A.weight` [r, in]
and `...lora_B.weight` [out, r]. The merge is W += (B @ A) * lora_alpha / r
(lora_alpha / sqrt(r) with rsLoRA; transposed with fan_in_fan_out), in
float32, before NormHead, so only one weight and its small factors are in
memory at a time.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from orchestrator.builder import config_values as values
from orchestrator.builder.checkpoint import tensor_shapes
from orchestrator.errors import BadInput

TARGETS = ("W_pack", "o_proj", "gate_proj", "up_proj", "down_proj")
CONFIG = "adapter_config.json"
WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<which>[AB])(?:\.default)?\.weight$")


@dataclass(frozen=True)
class Adapter:
    path: Path
    config: dict
    weights_file: str
    pairs: dict  # base weight name -> (lora_A key, lora_B key)

    @property
    def rslora(self) -> bool:
        return bool(self.config.get("use_rslora"))

    @property
    def fan_in_fan_out(self) -> bool:
        return bool(self.config.get("fan_in_fan_out"))

    def scale(self, weight: str) -> float:
        """lora_alpha / r for this weight's module (rank_pattern and alpha_pattern honoured), or / sqrt(r) with rsLoRA."""
        module = weight.removesuffix(".weight")
        r = _pattern(self.config.get("rank_pattern") or {}, module, self.config.get("r", 8))
        alpha = _pattern(self.config.get("alpha_pattern") or {}, module, self.config.get("lora_alpha", r))
        return alpha / math.sqrt(r) if self.rslora else alpha / r

    def files(self) -> list[str]:
        return [CONFIG, self.weights_file]

    def summary(self) -> dict:
        keep = ("peft_type", "r", "lora_alpha", "use_rslora", "fan_in_fan_out", "target_modules", "rank_pattern", "alpha_pattern",
                "base_model_name_or_path", "lora_dropout", "bias")
        return {k: self.config[k] for k in keep if k in self.config} | {"merged_weights": len(self.pairs)}


PATTERN_SECONDS = 0.5  # a rank_pattern or alpha_pattern key is a regex from the adapter's author: bounded in time


def _pattern(patterns: dict, module: str, default):
    """PEFT's per-module override: the first pattern that ends the module's name (PEFT's own rule, with a time bound)."""
    import regex

    for key, value in patterns.items():
        try:
            if regex.match(rf"(.*\.)?({key})$", module, timeout=PATTERN_SECONDS):
                return value
        except TimeoutError:
            raise BadInput(f"the adapter's pattern {str(key)[:40]!r} takes over {PATTERN_SECONDS:g} s to match {module}: "
                           "simplify rank_pattern/alpha_pattern in adapter_config.json") from None
        except regex.error as e:
            raise BadInput(f"the adapter's pattern {str(key)[:40]!r} is not a regular expression ({e}): fix adapter_config.json") from None
    return default


def read(path: Path, base_shapes: dict[str, tuple[int, ...]] | None) -> Adapter:
    """The adapter in `path`, checked against the base checkpoint's tensor shapes (None: already checked); one line naming any problem."""
    path = Path(path)
    if not (path / CONFIG).is_file():
        raise BadInput(f"{path} has no {CONFIG}: pass the directory PEFT saved the adapter into (it holds {CONFIG} and "
                       f"{WEIGHTS[0]} or {WEIGHTS[1]})")
    weights = next((w for w in WEIGHTS if (path / w).is_file()), None)
    if weights is None:
        raise BadInput(f"{path} has {CONFIG} but neither {WEIGHTS[0]} nor {WEIGHTS[1]}: copy the adapter's weights beside it")
    try:
        config = json.loads((path / CONFIG).read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise BadInput(f"{path / CONFIG} is not valid JSON ({e}): save the adapter again") from None
    if not isinstance(config, dict):
        raise BadInput(f"{path / CONFIG} holds a JSON {type(config).__name__}, not an object: save the adapter again")
    values.integer(config, CONFIG, "r", lo=1, hi=1 << 16, default=8)
    values.number(config, CONFIG, "lora_alpha", lo=1e-6, hi=1e6)  # a 1e308 alpha once made every merged weight infinite
    for key, check in (("rank_pattern", lambda v: isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 1 << 16),
                       ("alpha_pattern", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 1e-6 <= v <= 1e6)):
        patterns = values.mapping(config, CONFIG, key) or {}
        if not all(check(v) for v in patterns.values()):
            raise BadInput(f"{CONFIG} {key} has a value that is not a rank or scale in range: fix {CONFIG}")
    kind = str(config.get("peft_type", "LORA")).upper()
    if kind != "LORA":
        raise BadInput(f"{path} is a {kind} adapter: orch merges LoRA adapters only")
    if config.get("use_dora"):
        raise BadInput(f"{path} is a DoRA adapter (use_dora: true): its magnitude vectors need PEFT's merge_and_unload; "
                       "merge it with PEFT and build the merged model")
    if config.get("modules_to_save"):
        raise BadInput(f"{path} also saves whole modules ({', '.join(config['modules_to_save'])}): merge it with PEFT's "
                       "merge_and_unload and build the merged model")
    targets = config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else values.names(config, CONFIG, "target_modules")
    unknown = [t for t in targets if t.rsplit(".", 1)[-1] not in TARGETS]
    if unknown:
        raise BadInput(f"{path} targets {', '.join(unknown)}: orch merges LoRA on {', '.join(TARGETS)} (Baichuan's linear layers)")

    fmt = "safetensors" if weights.endswith(".safetensors") else "bin"
    shapes = tensor_shapes(path, fmt, [weights])
    found: dict[str, dict[str, str]] = {}
    for key in shapes:
        m = _KEY.match(key)
        if m is None:
            raise BadInput(f"{path / weights} holds {key}, which is not a LoRA factor (…lora_A.weight or …lora_B.weight)")
        if m["module"].rsplit(".", 1)[-1] not in TARGETS:
            raise BadInput(f"{path / weights} changes {m['module']}: orch merges LoRA on {', '.join(TARGETS)} only")
        found.setdefault(m["module"] + ".weight", {})[m["which"]] = key
    if not found:
        raise BadInput(f"{path / weights} holds no LoRA factors: is it an adapter?")
    fan_in_fan_out = bool(config.get("fan_in_fan_out"))
    pairs = {}
    for weight, ab in sorted(found.items(), key=lambda kv: _natural(kv[0])):
        if set(ab) != {"A", "B"}:
            raise BadInput(f"{path / weights} has lora_{next(iter(ab))} but no lora_{'B' if 'A' in ab else 'A'} for {weight}: "
                           "the adapter file is incomplete")
        a, b = shapes[ab["A"]], shapes[ab["B"]]
        if base_shapes is None:
            pairs[weight] = (ab["A"], ab["B"])
            continue
        base = base_shapes.get(weight)
        out_dim, in_dim = (base[1], base[0]) if base is not None and fan_in_fan_out else (base or (None, None))
        if base is None or len(a) != 2 or len(b) != 2 or a[0] != b[1] or b[0] != out_dim or a[1] != in_dim:
            raise BadInput(f"this adapter was trained for another base: {weight} is {list(base) if base else 'missing'} in the model "
                           f"but its factors are A {list(a)} and B {list(b)}: pass the adapter's own base model")
        pairs[weight] = (ab["A"], ab["B"])
    adapter = Adapter(path, config, weights, pairs)
    for weight in pairs:  # every pattern matched once now, in this process: a refusal is one line before anything is written
        scale = adapter.scale(weight)
        if not math.isfinite(scale) or scale == 0:
            raise BadInput(f"the adapter scales {weight} by {scale} (lora_alpha / r): fix r, lora_alpha or the patterns in {CONFIG}")
    return adapter


def _natural(name: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


class Factors:
    """The adapter's LoRA factors (small: rank r), and each weight's delta computed only when that weight streams through."""

    def __init__(self, adapter: Adapter):
        import torch

        path = adapter.path / adapter.weights_file
        if adapter.weights_file.endswith(".safetensors"):
            from safetensors.torch import load_file

            self.tensors = load_file(str(path))
        else:
            self.tensors = torch.load(str(path), map_location="cpu", weights_only=True)
        self.adapter = adapter

    def delta(self, weight: str):
        """(B @ A) * scale in float32, shaped like the base weight; None for a weight the adapter leaves alone."""
        import torch

        if weight not in self.adapter.pairs:
            return None
        a_key, b_key = self.adapter.pairs[weight]
        a, b = self.tensors[a_key].to(torch.float32), self.tensors[b_key].to(torch.float32)
        delta = (b @ a).mul_(self.adapter.scale(weight))
        return delta.T.contiguous() if self.adapter.fan_in_fan_out else delta
