"""The tiny checkpoint generator, reading a checkpoint (generation, markers, defaults), and planning a build."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import sentencepiece as spm

from orchestrator.builder import catalog, checkpoint as ckpt_mod
from orchestrator.errors import OrchError
from orchestrator.builder.fetch import select_files
from orchestrator.builder.plan import make_plan
from orchestrator.builder.tiny import ASSISTANT_PIECE, USER_PIECE
from reference import load_weights


@pytest.mark.parametrize("layers, fmt", [(32, "bin"), (40, "safetensors")])
def test_tiny_checkpoint_is_baichuan2_shaped(checkpoint, layers, fmt):
    model = checkpoint(layers, fmt=fmt)
    config = json.loads((model / "config.json").read_text())
    assert config["architectures"] == ["BaichuanForCausalLM"] and config["num_hidden_layers"] == layers
    assert ("max_position_embeddings" in config) == (layers == 32)  # the 13B config has none
    assert (model / ("pytorch_model.bin" if fmt == "bin" else "model.safetensors")).is_file()

    sp = spm.SentencePieceProcessor(model_file=str(model / "tokenizer.model"))
    gen = json.loads((model / "generation_config.json").read_text())
    assert gen["user_token_id"] == sp.piece_to_id(USER_PIECE) and gen["assistant_token_id"] == sp.piece_to_id(ASSISTANT_PIECE)
    assert sp.encode(f"hi{USER_PIECE}there") == [*sp.encode("hi"), gen["user_token_id"], *sp.encode("there")]

    head = load_weights(model)["lm_head.weight"]
    norms = np.linalg.norm(head, axis=1)
    assert norms.max() / norms.min() > 5, "lm_head rows must have unequal norms, or NormHead would change nothing"


def test_reading_a_checkpoint(checkpoint):
    ck = ckpt_mod.read(checkpoint(32))
    assert (ck.generation, ck.normhead, ck.layers, ck.positions, ck.chat) == (2, True, 32, "rope", True)
    assert (ck.markers.user_piece, ck.markers.assistant_piece) == (USER_PIECE, ASSISTANT_PIECE)
    assert ck.defaults.as_parameters() == {"temperature": 0.3, "top_k": 5, "top_p": 0.85, "repeat_penalty": 1.05, "num_predict": 48}
    assert "modeling_baichuan.py" not in ck.needed_files()


def test_markers_of_a_dummy_prefix_tokenizer_are_single_reserved_pieces(checkpoint):
    """With SentencePiece's dummy prefix a marker's text encodes as [▁, id]; it is still one user-defined piece and accepted."""
    model = checkpoint(32, dummy_prefix=True)
    sp = spm.SentencePieceProcessor(model_file=str(model / "tokenizer.model"))
    assert sp.encode(USER_PIECE, out_type=str) == ["\u2581", USER_PIECE]
    ck = ckpt_mod.read(model)
    assert ck.markers.ids == (sp.piece_to_id(USER_PIECE), sp.piece_to_id(ASSISTANT_PIECE))


def test_tensor_shapes_of_a_bin_match_torch_without_importing_it(checkpoint):
    import torch

    model = checkpoint(32, fmt="bin")
    expected = {k: tuple(v.shape) for k, v in torch.load(model / "pytorch_model.bin", mmap=True, weights_only=True).items()}
    assert ckpt_mod.tensor_shapes(model, "bin", ["pytorch_model.bin"]) == expected


def test_a_pickle_that_would_run_code_is_refused_and_never_run(tmp_path):
    import os
    import pickle
    import zipfile

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    with zipfile.ZipFile(tmp_path / "pytorch_model.bin", "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"w": Exploit()}))
    with pytest.raises(OrchError, match="cannot be read as a bin state dict.*download it again"):
        ckpt_mod.tensor_shapes(tmp_path, "bin", ["pytorch_model.bin"])
    assert not (tmp_path / "pwned").exists()


def test_a_pickle_index_that_unpacks_to_gigabytes_is_refused_before_it_is_read(tmp_path):
    """A small .bin whose data.pkl unpacks to 100 MB of opcodes (a zip bomb for the shape reader): one line, at once."""
    import zipfile

    with zipfile.ZipFile(tmp_path / "pytorch_model.bin", "w", compression=zipfile.ZIP_DEFLATED) as z:
        with z.open("archive/data.pkl", "w") as f:
            for _ in range(100):
                f.write(b"N" * (1 << 20))  # NONE, a hundred million times
    assert (tmp_path / "pytorch_model.bin").stat().st_size < 1 << 20
    with pytest.raises(OrchError, match="data.pkl unpacks to 104857600 bytes"):
        ckpt_mod.tensor_shapes(tmp_path, "bin", ["pytorch_model.bin"])


def test_baichuan1_is_detected_and_has_no_normhead(checkpoint):
    ck = ckpt_mod.read(checkpoint(32, generation=1))
    assert (ck.generation, ck.normhead) == (1, False)


def test_generation_read_from_modeling_file_text_without_running_it(checkpoint, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(checkpoint(32, generation=1), model)
    (model / "modeling_baichuan.py").write_text("raise SystemExit('executed!')\nclass NormHead: pass\n")
    ck = ckpt_mod.read(model)
    assert ck.generation == 2 and "NormHead" in ck.generation_evidence


def test_markers_that_do_not_match_the_tokenizer_are_refused(checkpoint, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(checkpoint(32), model)
    gen = json.loads((model / "generation_config.json").read_text())
    (model / "generation_config.json").write_text(json.dumps(gen | {"user_token_id": 500}))
    with pytest.raises(OrchError, match="user_token_id"):
        ckpt_mod.read(model)


def test_only_the_files_a_build_reads_are_fetched():
    listing = ["config.json", "generation_config.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
               "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin", "pytorch_model.bin.index.json",
               "modeling_baichuan.py", "tokenization_baichuan.py", "configuration_baichuan.py", "quantizer.py",
               "Baichuan2 模型社区许可协议.pdf", "Community License for Baichuan2 Model.pdf", "README.md", "media/x.png"]
    files = select_files(listing)
    assert "pytorch_model-00002-of-00002.bin" in files and "pytorch_model.bin.index.json" in files
    assert "modeling_baichuan.py" in files  # read as text to tell Baichuan 1 from 2
    assert not {"tokenization_baichuan.py", "quantizer.py", "README.md", "media/x.png"} & set(files)
    assert not any(f.endswith(".pdf") for f in files)
    with_st = select_files(listing + ["model.safetensors"])
    assert "model.safetensors" in with_st and not any(f.endswith(".bin") for f in with_st)


@pytest.mark.parametrize("spec, hub, repo", [("baichuan2-7b-chat", "hf", "baichuan-inc/Baichuan2-7B-Chat"),
                                             ("baichuan2-13b-chat", "modelscope", "baichuan-inc/Baichuan2-13B-Chat"),
                                             ("someone/my-baichuan2-ft", "hf", "someone/my-baichuan2-ft"),
                                             # the Hugging Face page's spelling, and any case of it, is the catalog's model
                                             ("Baichuan2-7B-Chat", "hf", "baichuan-inc/Baichuan2-7B-Chat"),
                                             ("baichuan-inc/baichuan2-7b-chat", "hf", "baichuan-inc/Baichuan2-7B-Chat")])
def test_sources_resolve(spec, hub, repo):
    src = catalog.resolve(spec, hub=hub)
    assert (src.repo_id, src.hub) == (repo, hub)
    if repo.startswith("baichuan-inc/"):
        assert src.kind == "catalog" and src.entry is not None


def test_plan_names_artifacts_the_community_way(tmp_path):
    plan = make_plan(catalog.resolve("baichuan2-7b-chat"), quant="q4_k_m,F16,q8_0,q4_K_M", output=tmp_path)
    assert [a.gguf for a in plan.artifacts] == ["baichuan2-7b-chat.Q4_K_M.gguf", "baichuan2-7b-chat.F16.gguf", "baichuan2-7b-chat.Q8_0.gguf"]
    assert [a.ollama_name for a in plan.artifacts] == ["baichuan2-7b-chat:q4_K_M", "baichuan2-7b-chat:f16", "baichuan2-7b-chat:q8_0"]
    assert plan.base_type == "F16" and plan.base_gguf == tmp_path / "baichuan2-7b-chat.F16.gguf"
