"""orch carries the smallest fixes to llama.cpp's converter; these tests fail loudly the day upstream makes one stale."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
from gguf import GGUFReader

from orchestrator.builder.llamacpp import provision as llamacpp
from orchestrator.builder.llamacpp.convert import converter_command
from orchestrator.builder.tiny import ASSISTANT_PIECE, USER_PIECE
from support import build_record

NORMAL, CONTROL = 1, 3


def test_upstream_converter_still_crashes_on_baichuan(checkpoint, llama_tree, tmp_path):
    cmd = converter_command(llamacpp.locate(llama_tree), checkpoint(32), tmp_path / "out.gguf", "F16", model_name="t",
                            normhead=False, control_ids=[], report=tmp_path / "r.json")
    cmd.insert(cmd.index("--"), "--no-fixes")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode != 0 and "RecursionError" in proc.stderr, (
        "llama.cpp's converter no longer crashes on Baichuan: the crash fix in orchestrator/builder/llamacpp/shim.py "
        "is stale; drop it and update this test"
    )


def test_build_report_records_what_upstream_got_wrong(built):
    report = build_record(built(32))["llama_cpp"]["converter_fixes"]
    assert report["upstream_recursion_bug"] is True
    assert report["normhead_applied"] is True
    types = {v["piece"]: v["type"] for v in report["upstream_marker_types"].values()}
    assert set(types) == {USER_PIECE, ASSISTANT_PIECE}
    assert all(t != "CONTROL" for t in types.values()), (
        f"upstream now types the chat markers {types}: the marker fix in orchestrator/builder/llamacpp/shim.py is stale"
    )


BUILDS = {"baichuan2 tokenizer": ("f32,f16,q8_0,q4_K_M", {}), "dummy-prefix tokenizer": ("f32,q4_K_M", {"dummy_prefix": True})}


@pytest.mark.parametrize("kind", BUILDS)
def test_only_the_markers_become_control_tokens(built, checkpoint, kind):
    """The markers become CONTROL; the other reserved pieces keep the type upstream gives them."""
    import sentencepiece as spm

    quants, options = BUILDS[kind]
    out = built(32, quants, **options)
    reader = GGUFReader(next(out.glob("*.F32.gguf")))
    field = reader.fields["tokenizer.ggml.token_type"]
    types = np.array([field.parts[i][0] for i in field.data])
    sp = spm.SentencePieceProcessor(model_file=str(checkpoint(32, **options) / "tokenizer.model"))
    markers = {sp.piece_to_id(USER_PIECE), sp.piece_to_id(ASSISTANT_PIECE)}
    control = set(np.flatnonzero(types == CONTROL).tolist())
    assert control == markers | {sp.bos_id(), sp.eos_id()}
    reserved = {sp.piece_to_id(f"<reserved_{n}>") for n in range(100, 112)} - markers
    assert all(types[i] == NORMAL for i in reserved)


@pytest.mark.parametrize("kind", BUILDS)
def test_the_space_prefix_flag_says_what_the_tokenizer_does(built, kind):
    """Upstream writes no add_space_prefix for Baichuan, so llama.cpp assumes "▁" after every marker; orch writes the tokenizer's own."""
    quants, options = BUILDS[kind]
    out = built(32, quants, **options)
    report = build_record(out)["llama_cpp"]["converter_fixes"]
    assert report["tokenizer_adds_dummy_prefix"] is options.get("dummy_prefix", False)
    assert report["upstream_add_space_prefix"] is None, (
        "upstream now writes tokenizer.ggml.add_space_prefix for Baichuan: the space-prefix fix in "
        "orchestrator/builder/llamacpp/shim.py may be stale"
    )
    reader = GGUFReader(next(out.glob("*.F32.gguf")))
    field = reader.fields["tokenizer.ggml.add_space_prefix"]
    assert bool(field.parts[field.data[0]][0]) is options.get("dummy_prefix", False)


def test_vocabulary_sized_tensors_are_converted_in_row_chunks_exactly(built, checkpoint, llama_tree, tmp_path):
    """embed_tokens and lm_head go through block by block (never whole in float32); the blocks join to the same bytes."""
    report = build_record(built(32))["llama_cpp"]["converter_fixes"]
    assert report["chunked_tensors"] == ["model.embed_tokens.weight", "lm_head.weight"]
    cmd = converter_command(llamacpp.locate(llama_tree), checkpoint(32), tmp_path / "chunks.gguf", "F32", model_name="t",
                            normhead=True, control_ids=[9, 10], report=tmp_path / "r.json")
    cmd.insert(cmd.index("--"), "--chunk-rows=100")  # 1024 rows: eleven blocks, the last one short
    subprocess.run(cmd, check=True, capture_output=True)
    whole = {t.name: np.array(t.data) for t in GGUFReader(next(built(32).glob("*.F32.gguf"))).tensors}
    chunked = {t.name: np.array(t.data) for t in GGUFReader(tmp_path / "chunks.gguf").tensors}
    assert whole.keys() == chunked.keys() and all(np.array_equal(whole[k], chunked[k]) for k in ("token_embd.weight", "output.weight"))
