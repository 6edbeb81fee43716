"""Malformed inputs, one row each: one line naming the problem, a usage exit (2), no traceback, nothing written.

GGUFs are written here with the gguf package (or, for counts no writer would produce, byte by byte)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from support import cli

TOKENS = [f"<t{i}>" for i in range(16)] + ["<reserved_106>", "<reserved_107>"]


def gguf_file(path: Path, *, tokens=TOKENS, types=None, block_count=32, markers=None, output=(18, 4)) -> Path:
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), "baichuan")
    if isinstance(block_count, list):
        w.add_array("baichuan.block_count", block_count)
    else:
        w.add_block_count(block_count)
    w.add_token_list(tokens)
    w.add_token_types(types if types is not None else [1] * (len(tokens) - 2) + [3, 3])
    if markers is not None:
        w.add_array("orch.chat.marker_ids", markers)
    w.add_tensor("output.weight", np.ones(output, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def two_million_empty_tokens(path: Path) -> Path:
    """A header announcing 2,000,000 tokens: orch must refuse on the count, before reading (or needing) them."""
    key = b"tokenizer.ggml.tokens"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key + struct.pack("<IIQ", 9, 8, 2_000_000)
                     + struct.pack("<Q", 0) * 1000)
    return path


def cut(path: Path) -> Path:
    gguf_file(path)
    path.write_bytes(path.read_bytes()[:200])
    return path


@pytest.mark.parametrize("make, exit_code, says", [
    (lambda p: gguf_file(p, types=[1] * 30), 2, "30 token types for 18 tokens"),
    (lambda p: gguf_file(p, block_count=[32, 40]), 2, "block_count is"),
    (lambda p: gguf_file(p, types=[99] * 18), 2, "not one of llama.cpp's token types"),
    (two_million_empty_tokens, 2, "holds 2000000 entries"),
    (cut, 2, "cut short"),
    (lambda p: (p.mkdir(), p)[1], 2, "is a directory"),
    (lambda p: (p.write_text("hello"), p)[1], 2, "not a GGUF file"),
    (lambda p: gguf_file(p, markers=[999999, 1000000]), 1, "are not ids of this 18-token vocabulary"),
    (lambda p: gguf_file(p, output=(72,)), 1, "not a matrix"),
], ids=["more-types-than-tokens", "block-count-array", "unknown-token-type", "two-million-tokens", "cut-short", "a-directory",
        "not-a-gguf", "marker-ids-out-of-range", "one-dimensional-output"])
def test_orch_inspect_on_a_malformed_gguf(tmp_path, make, exit_code, says):
    path = make(tmp_path / "model.gguf")
    proc = cli("inspect", str(path), "--check", "--json", check=False)
    assert proc.returncode == exit_code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    if exit_code == 2:
        (line,) = proc.stderr.strip().splitlines()
        assert line.startswith("error: ") and says in line, line
    else:
        assert says in proc.stdout, proc.stdout


@pytest.mark.parametrize("url, says", [
    ("http://hooks.example.com:abc/services/T0/B0/XXXX", "has no valid port"),
    ("http://hooks.example.com:99999/services/T0/B0/XXXX", "has no valid port"),
    ("ftp://hooks.example.com/x", "is not an http(s) URL"),
])
def test_a_bad_webhook_url_is_one_line_before_anything_is_probed(url, says):
    proc = cli("health", "--host", "http://127.0.0.1:9", "--watch", "--alert-webhook", url, check=False)
    assert proc.returncode == 2 and says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert "XXXX" not in proc.stderr, "the webhook's token is never shown"


def test_a_240_character_directory_name_builds_under_a_name_that_fits(checkpoint, tmp_path):
    import shutil

    model = tmp_path / ("baichuan-" + "x" * 231)
    shutil.copytree(checkpoint(32), model)
    out = tmp_path / "out"
    proc = cli("build", str(model), "--quant", "f16", "--no-eval", "--no-register", "--dir", str(out), check=False)
    assert proc.returncode == 0, proc.stderr
    assert all(len(p.name) < 120 for p in out.iterdir())
