"""The quality report: every quantized type against the unquantized GGUF on orch's calibration text, and --min-top1."""

from __future__ import annotations

import json

import numpy as np
import pytest

from orchestrator.builder.quality import calibration_tokens, evaluate
from support import Recording, build_record, cli, gguf_logits


def test_the_report_measures_each_type_against_the_unquantized_model(built, checkpoint):
    out = built(32)  # f32, f16, q8_0, q4_K_M: the reference is the converter's F32
    record = build_record(out)
    assert record["quality"]["reference"] == "F32" and record["quality"]["tokens"] == 512
    by_type = {a["type"]: a.get("quality") for a in record["artifacts"]}
    assert by_type["F32"] is None and by_type["F16"] is None, "the unquantized types are the yardstick, not measured"
    q8, q4 = by_type["Q8_0"], by_type["Q4_K_M"]
    assert q8["kl_divergence"] < q4["kl_divergence"] and q8["top1_agreement"] > q4["top1_agreement"]
    assert q8["kl_divergence"] < 0.01 and q8["top1_agreement"] > 0.85

    # the same figures computed here, independently, from llama.cpp's logits over the same tokens, with the report's
    # llama.cpp settings (batch, KV cache, threads, no repacking): the same settings give the same logits on any CPU
    tokens = calibration_tokens(checkpoint(32) / "tokenizer.model", 512)
    (base,), (quant,) = (gguf_logits(next(out.glob(f"*.{t}.gguf")), [tokens], settings="report") for t in ("F32", "Q4_K_M"))

    def log_softmax(x):
        x = x - x.max(axis=1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=1, keepdims=True))

    b, q = log_softmax(base), log_softmax(quant)
    kl = float(np.mean((np.exp(b) * (b - q)).sum(axis=1)))
    top1 = float((b.argmax(1) == q.argmax(1)).mean())
    ppl = float(np.exp(-q[np.arange(len(tokens) - 1), tokens[1:]].mean()))
    # the report keeps float32 log-probabilities and rounds its figures; nothing else may differ
    assert kl == pytest.approx(q4["kl_divergence"], rel=1e-3, abs=1e-5)
    assert top1 == pytest.approx(q4["top1_agreement"], abs=1e-4)
    assert ppl == pytest.approx(q4["perplexity"], rel=1e-3)


def test_the_report_counts_the_tokens_it_scores(built, checkpoint, tmp_path):
    out = built(32)
    tokens = calibration_tokens(checkpoint(32) / "tokenizer.model", 300)
    reporter = Recording()
    evaluate(next(out.glob("*.F32.gguf")), {"q8_0": next(out.glob("*.Q8_0.gguf")), "q4_K_M": next(out.glob("*.Q4_K_M.gguf"))},
             tokens, work=tmp_path, reporter=reporter)
    (bar,) = reporter.bars
    assert bar["unit"] == "tokens" and bar["total"] == 3 * len(tokens), "the unquantized model and each type read every token"
    assert bar["completed"][-1] == 3 * len(tokens) and bar["completed"] == sorted(bar["completed"])
    assert not list(tmp_path.glob("quality.tokens")), "the count is not left in the build"


def test_a_longer_quant_list_converts_nothing_again_and_measures_only_the_type_it_adds(checkpoint, tmp_path):
    """At 7B a conversion is a 15 GB F16 and the report reads every type: a second --quant list redoes neither."""
    from orchestrator.builder import catalog
    from orchestrator.builder.pipeline import run_build
    from orchestrator.builder.plan import make_plan

    out = tmp_path / "b"
    first = json.loads(cli("build", str(checkpoint(32)), "--quant", "q4_K_M", "--eval-tokens", "64", "--no-register", "--dir", str(out),
                           "--json").stdout)
    shown = cli("build", str(checkpoint(32)), "--quant", "q4_K_M", "--eval-tokens", "64", "--no-register", "--dir", str(out))
    assert "Kept for another --quant list: " in shown.stdout and ".F16.gguf" in shown.stdout
    reporter = Recording()
    again = run_build(make_plan(catalog.resolve(str(checkpoint(32))), quant="q4_K_M,q8_0", output=out, eval_tokens=64), reporter)
    assert {"convert", "quantize:Q4_K_M"} <= set(again["resumed_stages"]) and "quantize:Q8_0" not in again["resumed_stages"]
    assert [b["description"] for b in reporter.bars if b["description"].startswith("quality of")] == ["quality of Q8_0"]
    by_type = {a["type"]: a["quality"] for a in again["artifacts"]}
    assert by_type["Q4_K_M"] == first["artifacts"][0]["quality"] and by_type["Q8_0"]["top1_agreement"] > 0


def test_no_eval_skips_the_report_and_min_top1_fails_the_build_in_one_line(checkpoint, tmp_path):
    out = tmp_path / "b"
    record = json.loads(cli("build", str(checkpoint(32)), "--quant", "q4_K_M", "--no-eval", "--no-register", "--dir", str(out),
                            "--json").stdout)
    assert "quality" not in record and "quality" not in record["timings"]
    shown = cli("build", str(checkpoint(32)), "--quant", "q4_K_M", "--eval-tokens", "64", "--no-register", "--dir", str(out))
    assert "top-1" in shown.stdout and "KL" in shown.stdout and "calibration text" in shown.stdout
    assert build_record(out)["artifacts"][0]["quality"]["positions"] == 64
    failed = cli("build", str(checkpoint(32)), "--quant", "q4_K_M", "--eval-tokens", "64", "--min-top1", "0.99", "--no-register",
                 "--dir", str(out), check=False)
    assert failed.returncode == 1
    (line,) = [ln for ln in failed.stderr.splitlines() if ln.startswith("error:")]
    assert failed.stderr.rstrip().endswith(line)
    assert line.startswith("error: Q4_K_M agrees with the unquantized model on") and "below --min-top1 0.99" in line and "q8_0" in line
    assert build_record(out)["artifacts"][0]["quality"]["top1_agreement"] < 0.99, "the figures are kept for the user to read"


@pytest.mark.parametrize("args, says", [
    (["--eval-tokens", "8"], "--eval-tokens 8"),
    (["--min-top1", "1.5"], "--min-top1 1.5 is not a share"),
    (["--min-top1", "0.9", "--no-eval"], "--min-top1 needs the quality report"),
])
def test_bad_report_options_are_one_line(tmp_path, args, says):
    proc = cli("build", "tiny", *args, "--no-register", "--dir", str(tmp_path / "out"), check=False)
    assert proc.returncode == 2 and says in proc.stderr and not (tmp_path / "out").exists()
