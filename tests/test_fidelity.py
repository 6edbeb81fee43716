"""The built GGUF must compute what Baichuan2 computes: logits against an independent numpy float64 forward pass."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import sentencepiece as spm

from orchestrator.builder.llamacpp import provision as llamacpp
from orchestrator.builder.llamacpp.convert import converter_command
from reference import Reference
from support import compare, gguf_logits


def sequences(model_dir) -> list[list[int]]:
    """Several token sequences: real text through the checkpoint's tokenizer, and random ids."""
    sp = spm.SentencePieceProcessor(model_file=str(model_dir / "tokenizer.model"))
    texts = ["The quick brown fox jumps over the lazy dog.", "北京是中国的首都，也是一座历史悠久的城市。"]
    rng = np.random.default_rng(7)
    random = [rng.integers(3, sp.vocab_size(), size=n).tolist() for n in (24, 40)]
    return [[1, *sp.encode(t)] for t in texts] + random


@pytest.fixture(scope="module")
def reference_logits(checkpoint):
    cache = {}

    def get(layers: int, **options):
        key = (layers, *sorted(options.items()))
        if key not in cache:
            model_dir = checkpoint(layers, **options)
            ref = Reference(model_dir, normhead=True)
            seqs = sequences(model_dir)
            cache[key] = (seqs, [ref.logits(s) for s in seqs])
        return cache[key]

    return get


@pytest.mark.parametrize("layers", [32, 40], ids=["7B-shape-rope", "13B-shape-alibi"])
@pytest.mark.parametrize("quant", ["F32", "F16"])
def test_built_gguf_matches_reference(built, reference_logits, layers, quant):
    out = built(layers)
    seqs, want = reference_logits(layers)
    got = gguf_logits(next(out.glob(f"*.{quant}.gguf")), seqs)
    result = compare(got, want)
    print(f"{layers}L {quant}: {result}")
    assert result.passes(allow_near_ties=quant == "F16"), result
    if quant == "F32":
        assert result.near_tie_flips == 0, result


def test_a_dummy_prefix_tokenizer_builds_and_matches_reference(built, reference_logits):
    """A tokenizer with SentencePiece's dummy prefix (Baichuan 1 lineage, retrained fine-tunes) is accepted, and the model is exact."""
    out = built(32, "f32,q4_K_M", dummy_prefix=True)
    seqs, want = reference_logits(32, dummy_prefix=True)
    result = compare(gguf_logits(next(out.glob("*.F32.gguf")), seqs), want)
    assert result.passes(allow_near_ties=False), result


@pytest.mark.parametrize("layers", [32, 40], ids=["7B-shape-rope", "13B-shape-alibi"])
def test_without_normhead_the_same_check_fails(checkpoint, reference_logits, llama_tree, tmp_path, layers):
    """Converted with only the crash and marker fixes, the checkpoint answers differently: NormHead matters."""
    model_dir = checkpoint(layers)
    gguf = tmp_path / "no-normhead.F32.gguf"
    tree = llamacpp.locate(llama_tree)
    cmd = converter_command(tree, model_dir, gguf, "F32", model_name="no-normhead", normhead=False,
                            control_ids=[9, 10], report=tmp_path / "report.json")
    subprocess.run(cmd, check=True, capture_output=True)
    seqs, want = reference_logits(layers)
    result = compare(gguf_logits(gguf, seqs), want)
    print(f"{layers}L without NormHead: {result}")
    assert not result.passes(allow_near_ties=True), result
    assert result.min_cosine < 0.99, result


def test_baichuan1_builds_without_normhead_and_matches_its_reference(checkpoint, tmp_path):
    """Baichuan 1 has no NormHead: orch detects the generation and leaves lm_head as stored."""
    from support import build_record, orch

    model_dir = checkpoint(32, generation=1)
    out = tmp_path / "b1"
    orch("build", str(model_dir), "--quant", "f32", "--no-register", "--dir", str(out))
    record = build_record(out)
    assert (record["model"]["generation"], record["model"]["normhead"]) == (1, False)
    seqs = sequences(model_dir)
    result = compare(gguf_logits(next(out.glob("*.F32.gguf")), seqs), [Reference(model_dir, normhead=False).logits(s) for s in seqs])
    assert result.passes(allow_near_ties=False), result
