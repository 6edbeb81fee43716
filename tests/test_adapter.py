"""orch build --adapter: a PEFT LoRA merged as the base streams; the GGUF computes what the merged model computes."""

from __future__ import annotations

import json

import pytest
import torch

from lora import make_lora
from reference import Reference
from support import build_record, cli, compare, gguf_logits
from test_fidelity import sequences

CASES = {
    "7B shape, W_pack only (Baichuan2's fine-tune), safetensors": dict(layers=32, targets=("W_pack",), fmt="safetensors"),
    "7B shape, every target, .bin, rsLoRA": dict(layers=32, targets=("W_pack", "o_proj", "gate_proj", "up_proj", "down_proj"),
                                                 fmt="bin", rslora=True, r=8, alpha=16),
    "13B shape, W_pack only, .bin": dict(layers=40, targets=("W_pack",), fmt="bin"),
    "13B shape, every target, safetensors": dict(layers=40, targets=("W_pack", "o_proj", "gate_proj", "up_proj", "down_proj"),
                                                 fmt="safetensors"),
    "7B shape, o_proj stored fan_in_fan_out, .bin in bf16": dict(layers=32, targets=("o_proj",), fmt="bin", fan_in_fan_out=True,
                                                                 dtype=torch.bfloat16),
}


@pytest.mark.parametrize("case", CASES)
def test_base_plus_adapter_matches_the_merged_reference_and_the_base_alone_does_not(case, checkpoint, built, tmp_path):
    opts = dict(CASES[case])
    layers = opts.pop("layers")
    base = checkpoint(layers)
    adapter = make_lora(tmp_path / "output" / "checkpoint-1000", base, **opts)
    out = tmp_path / "merged"
    cli("build", str(base), "--adapter", str(adapter), "--quant", "f16", "--no-register", "--dir", str(out))
    record = build_record(out)
    assert record["adapter"]["config"]["r"] == opts.get("r", 4) and record["adapter"]["config"]["merged_weights"] > 0
    assert set(record["adapter"]["files"]) == {"adapter_config.json", f"adapter_model.{opts['fmt']}"}
    assert record["artifacts"][0]["ollama_name"] == "output-checkpoint-1000:f16", "the default name comes from the adapter"

    seqs = sequences(base)
    want = [Reference(base, adapter=adapter).logits(s) for s in seqs]
    merged = compare(gguf_logits(out / "output-checkpoint-1000.F16.gguf", seqs), want)
    assert merged.passes(allow_near_ties=True), merged
    without = compare(gguf_logits(next(built(layers).glob("*.F16.gguf")), seqs), want)
    assert not without.passes(allow_near_ties=True), f"the base alone should not answer like the merged model: {without}"


def bad_adapter(tmp_path, base, **kw):
    return make_lora(tmp_path / "adapter", base, **kw)


@pytest.mark.parametrize("mutate, says", [
    (lambda d: (d / "adapter_config.json").unlink(), "has no adapter_config.json"),
    (lambda d: (d / "adapter_model.safetensors").unlink(), "neither adapter_model.safetensors nor adapter_model.bin"),
    (lambda d: _config(d, peft_type="IA3"), "is a IA3 adapter: orch merges LoRA adapters only"),
    (lambda d: _config(d, use_dora=True), "is a DoRA adapter"),
    (lambda d: _config(d, target_modules=["q_proj", "W_pack"]), "targets q_proj"),
    (lambda d: _config(d, alpha_pattern={"W_pack[": 4}), "is not a regular expression"),
    (lambda d: _config(d, r=0), "adapter_config.json r is 0, not a whole number"),
    (lambda d: _config(d, lora_alpha=1e308), "lora_alpha is 1e+308"),
    (lambda d: _config(d, target_modules=7), "target_modules is 7"),
    (lambda d: _config(d, rank_pattern={"W_pack": "eight"}), "rank_pattern has a value"),
    (lambda d: (d / "adapter_config.json").write_text("[1, 2]"), "holds a JSON list, not an object"),
], ids=["no config", "no weights", "not LoRA", "DoRA", "unknown target", "broken-pattern", "rank-zero", "alpha-1e308",
        "targets-an-int", "pattern-value-text", "config-a-list"])
def test_bad_adapters_are_one_line_exit_2_and_nothing_written(checkpoint, tmp_path, mutate, says):
    base = checkpoint(32)
    adapter = bad_adapter(tmp_path, base)
    mutate(adapter)
    proc = cli("build", str(base), "--adapter", str(adapter), "--no-register", "--dir", str(tmp_path / "out"), check=False)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and says in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_pattern_that_backtracks_forever_in_pythons_re_is_matched_in_bounded_time(checkpoint, tmp_path):
    """PEFT matches rank_pattern keys as regexes; ([a-zA-Z0-9_.]+)+Q hung Python's re on every module name. Read in a
    child process so that a hang is a failed test, not a hung suite."""
    import subprocess
    import sys

    adapter = bad_adapter(tmp_path, checkpoint(32))
    _config(adapter, rank_pattern={"([a-zA-Z0-9_.]+)+Q": 2})
    code = "import sys; from orchestrator.builder import adapter; a = adapter.read(sys.argv[1], None); print(len(a.pairs))"
    proc = subprocess.run([sys.executable, "-c", code, str(adapter)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and int(proc.stdout) > 0, proc.stderr


def test_an_adapter_for_another_base_names_the_first_tensor_that_disagrees(checkpoint, tmp_path):
    other = checkpoint(40)  # hidden 160 against the 32-layer model's 256
    shapes = {f"model.layers.{i}.self_attn.W_pack.weight": (3 * 160, 160) for i in range(32)}
    adapter = make_lora(tmp_path / "adapter", other, shapes=shapes)
    proc = cli("build", str(checkpoint(32)), "--adapter", str(adapter), "--no-register", "--dir", str(tmp_path / "out"), check=False)
    assert proc.returncode == 2 and "trained for another base: model.layers.0.self_attn.W_pack.weight is [768, 256]" in proc.stderr
    assert not (tmp_path / "out").exists()


def _config(directory, **changes):
    path = directory / "adapter_config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def test_an_adapter_build_resumes_and_a_changed_adapter_is_merged_again(checkpoint, tmp_path):
    base = checkpoint(32)
    adapter = make_lora(tmp_path / "law-lora", base)
    args = ["build", str(base), "--adapter", str(adapter), "--quant", "q8_0", "--no-register", "--dir", str(tmp_path / "out"), "--json"]
    first = json.loads(cli(*args).stdout)
    again = json.loads(cli(*args).stdout)
    assert {"convert", "quantize:Q8_0", "verify:Q8_0"} <= set(again["resumed_stages"])
    assert again["artifacts"][0]["sha256"] == first["artifacts"][0]["sha256"]
    make_lora(adapter, base, seed=2)  # retrained: other factors in the same place
    changed = json.loads(cli(*args).stdout)
    assert "convert" not in changed["resumed_stages"] and changed["artifacts"][0]["sha256"] != first["artifacts"][0]["sha256"]
    assert changed["adapter"]["files"]["adapter_model.safetensors"]["sha256"] != first["adapter"]["files"]["adapter_model.safetensors"]["sha256"]
