"""orch inspect judges a Baichuan GGUF, orch's or anyone's: NormHead, chat markers, space prefix, positions, template."""

from __future__ import annotations

import json
import subprocess

import pytest

from orchestrator.builder.llamacpp import provision
from orchestrator.builder.llamacpp.convert import converter_command
from support import cli


def judge(gguf, *args: str) -> tuple[int, dict]:
    proc = cli("inspect", str(gguf), "--json", "--check", *args, check=False)
    return proc.returncode, {v["check"]: v for v in json.loads(proc.stdout)["verdicts"]}


@pytest.fixture(scope="module")
def upstream_gguf(checkpoint, llama_tree, tmp_path_factory):
    """What llama.cpp's converter makes of Baichuan2 with only its crash fixed: the GGUFs that circulate."""
    out = tmp_path_factory.mktemp("upstream") / "baichuan2.F16.gguf"
    cmd = converter_command(provision.locate(llama_tree), checkpoint(32), out, "F16", model_name="upstream", normhead=False,
                            control_ids=[], report=out.with_suffix(".json"))
    cmd.insert(cmd.index("--"), "--crash-fix-only")
    subprocess.run(cmd, check=True, capture_output=True)
    return out


@pytest.mark.parametrize("layers, quant", [(32, "F16"), (32, "Q4_K_M"), (40, "Q8_0")])
def test_orchs_own_ggufs_pass(built, layers, quant):
    code, v = judge(next(built(layers).glob(f"*.{quant}.gguf")))
    assert code == 0
    assert {k: x["status"] for k, x in v.items()} == {"generation": "pass", "NormHead": "pass", "chat markers": "pass",
                                                       "space prefix": "pass", "positions": "pass", "chat template": "pass"}
    assert "as orch recorded" in v["generation"]["detail"] and ("ALiBi" if layers == 40 else "RoPE") in v["positions"]["detail"]


def test_a_converter_only_gguf_is_flagged_on_normhead_and_the_markers(upstream_gguf):
    code, v = judge(upstream_gguf)
    assert code == 1
    assert v["generation"]["status"] == "unknown"  # a 1024-piece vocabulary and no orch metadata
    assert v["NormHead"]["status"] == "fail" and "pass --generation 1" in v["NormHead"]["detail"]
    assert v["chat markers"]["status"] == "fail" and "<reserved_106> typed NORMAL" in v["chat markers"]["detail"]
    assert "not CONTROL" in v["chat markers"]["detail"]
    code, v = judge(upstream_gguf, "--generation", "2")
    assert code == 1 and v["NormHead"]["status"] == "fail" and "--generation 1" not in v["NormHead"]["detail"]
    assert v["space prefix"]["status"] == "fail" and "unset" in v["space prefix"]["detail"]
    assert v["chat template"]["status"] == "warn"
    table = cli("inspect", str(upstream_gguf), check=False).stdout
    assert "Verdict" in table and "NOT applied" in table


def test_the_space_prefix_is_judged_against_the_tokenizer(upstream_gguf, checkpoint, built):
    _, v = judge(upstream_gguf, "--tokenizer", str(checkpoint(32) / "tokenizer.model"))
    assert v["space prefix"]["status"] == "fail"
    _, v = judge(next(built(32, "f32,q4_K_M", dummy_prefix=True).glob("*.Q4_K_M.gguf")))
    assert v["space prefix"]["status"] == "pass" and "add_space_prefix true" in v["space prefix"]["detail"]


def test_baichuan_1_has_no_normhead_by_design(checkpoint, tmp_path):
    out = tmp_path / "b1"
    cli("build", str(checkpoint(32, generation=1)), "--quant", "q8_0", "--no-eval", "--no-register", "--dir", str(out))
    code, v = judge(next(out.glob("*.gguf")))
    assert code == 0 and v["NormHead"]["status"] == "pass" and "not used by Baichuan 1" in v["NormHead"]["detail"]


def test_inspect_prints_only_its_own_lines(tiny_build):
    """llama.cpp's log line about n_ctx_train (0) used to reach the terminal after the verdicts."""
    import subprocess

    from support import ORCH

    (gguf,) = tiny_build.glob("*.gguf")
    proc = subprocess.run([str(ORCH), "inspect", str(gguf), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "llama_context" not in proc.stdout + proc.stderr and "n_ctx_train" not in proc.stdout + proc.stderr
    assert "chat markers" in proc.stdout and "pass" in proc.stdout
