"""Bad input: one line naming the problem and the fix, a non-zero exit, and nothing written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from support import fails_cleanly


@pytest.fixture
def copy_of(checkpoint, tmp_path):
    def copy() -> Path:
        dest = tmp_path / "model"
        shutil.copytree(checkpoint(32), dest)
        return dest

    return copy


def test_unknown_model_suggests_near_names(tmp_path):
    line = fails_cleanly("baichuan2-7b-caht", "--dir", str(tmp_path / "out"))
    assert "unknown model 'baichuan2-7b-caht'" in line and "baichuan2-7b-chat" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("spec, full", [("baichuan-inc/Baichuan2-13B-Chat-4bits", "baichuan2-13b-chat"),
                                        ("baichuan2-7b-chat-4bits", "baichuan2-7b-chat")])
def test_four_bit_checkpoint_is_refused_naming_the_full_one(tmp_path, spec, full):
    line = fails_cleanly(spec, "--dir", str(tmp_path / "out"))
    assert "4-bit" in line and f"orch build {full}" in line
    assert not (tmp_path / "out").exists()


def test_local_four_bit_checkpoint_is_refused(copy_of, tmp_path):
    model = copy_of()
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(config | {"quantization_config": {"load_in_4bit": True, "quant_method": "bitsandbytes"}}))
    line = fails_cleanly(str(model), "--dir", str(tmp_path / "out"))
    assert "quantiz" in line and "full-precision" in line
    assert not (tmp_path / "out").exists()


def test_directory_without_tokenizer_model(copy_of, tmp_path):
    model = copy_of()
    (model / "tokenizer.model").unlink()
    line = fails_cleanly(str(model), "--dir", str(tmp_path / "out"))
    assert "tokenizer.model" in line
    assert not (tmp_path / "out").exists()


def test_config_of_another_architecture(copy_of, tmp_path):
    model = copy_of()
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(config | {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    line = fails_cleanly(str(model), "--dir", str(tmp_path / "out"))
    assert "LlamaForCausalLM" in line and "Baichuan" in line
    assert not (tmp_path / "out").exists()


def test_not_a_directory_at_all(tmp_path):
    line = fails_cleanly(str(tmp_path / "missing-model"), "--dir", str(tmp_path / "out"))
    assert "missing-model" in line


def test_invalid_quant_type(tmp_path):
    line = fails_cleanly("tiny", "--quant", "q4_K_M,q4_K_X", "--dir", str(tmp_path / "out"))
    assert "unknown quant type 'q4_K_X'" in line and "Q4_K_M" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["My Bot", "bot:v1:v2", "-bot", "bot:" + "x" * 200])
def test_invalid_ollama_name(tmp_path, name):
    line = fails_cleanly("tiny", "--name", name, "--dir", str(tmp_path / "out"))
    assert "not a valid Ollama model name" in line
    assert not (tmp_path / "out").exists()


def test_output_under_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    line = fails_cleanly("tiny", "--dir", str(tmp_path / "file" / "out"))
    assert "cannot write to" in line and "--dir" in line


@pytest.fixture
def mounted(tmp_path):
    """A small tmpfs at a path of our own: a real read-only or nearly full filesystem."""
    mounts = []

    def mount(options: str) -> Path:
        point = tmp_path / f"mnt{len(mounts)}"
        point.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], check=True)
        mounts.append(point)
        return point

    if os.geteuid() != 0:
        pytest.fail("mounting a small filesystem needs root: run the suite as root, as .ci/run does")
    yield mount
    for point in mounts:
        subprocess.run(["umount", str(point)], check=False)


def test_read_only_output_directory(mounted):
    ro = mounted("ro,size=1m")
    line = fails_cleanly("tiny", "--dir", str(ro / "out"))
    assert "cannot write to" in line and "--dir" in line


def test_not_enough_free_disk(mounted):
    small = mounted("size=4m")
    line = fails_cleanly("tiny", "--dir", str(small / "out"))
    assert "not enough free disk" in line and "needs about" in line
    assert list(small.iterdir()) == []


def _safetensors_with_header(header: bytes, length: int | None = None) -> bytes:
    import struct

    return struct.pack("<Q", len(header) if length is None else length) + header


@pytest.mark.parametrize("content", [
    _safetensors_with_header(b"{}", length=2**62),  # a header longer than any file: MemoryError or OverflowError before
    _safetensors_with_header(b"\xff" * 16),  # not JSON
    _safetensors_with_header(b'{"model.embed_tokens.weight": [1, 2]}'),  # an entry that is not a tensor description
    _safetensors_with_header(b'{"x": {"dtype": "F16", "shape": [4], "data_offsets": [0, 999999]}}'),  # data beyond the end
], ids=["header-length-2^62", "not-json", "non-dict-entry", "offsets-past-the-end"])
def test_a_garbage_safetensors_header_is_one_line(copy_of, tmp_path, content):
    model = copy_of()
    for old in [*model.glob("*.safetensors"), *model.glob("*.bin"), *model.glob("*.index.json")]:
        old.unlink()
    (model / "model.safetensors").write_bytes(content)
    line = fails_cleanly(str(model), "--dir", str(tmp_path / "out"))
    assert "model.safetensors cannot be read as a safetensors state dict" in line
    assert not (tmp_path / "out").exists()
