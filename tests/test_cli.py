"""The orch command as a user meets it: help, the catalog, a full `orch build tiny`, re-runs, names, inspect."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from gguf import GGUFReader

from support import build_record, cli, orch

HEAVY = ("torch", "llama_cpp", "transformers", "huggingface_hub", "modelscope", "sentencepiece", "gguf", "numpy")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_help_and_models_import_nothing_heavy():
    """`orch --help` and `orch models` stay instant because torch and llama.cpp are imported only where used."""
    code = ("import sys\nfrom orchestrator.cli import app\n"
            "for argv in (['--help'], ['build', '--help'], ['models']):\n"
            "    try:\n        app(argv)\n    except SystemExit:\n        pass\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_help_shows_commands_and_examples():
    out = cli("--help").stdout
    for command in ("models", "build", "inspect", "register", "chat", "health", "up", "down", "status", "logs"):
        assert command in out
    build_help = cli("build", "--help").stdout
    for option in ("--source", "--revision", "--quant", "--dir", "--name", "--system", "--no-register", "--force", "--json"):
        assert option in build_help
    assert "orch build baichuan2-13b-chat --source modelscope" in build_help


def test_models_lists_the_catalog_with_both_hubs():
    rows = {r["name"]: r for r in json.loads(cli("models", "--json").stdout)}
    for size in ("7b", "13b"):
        for kind in ("base", "chat"):
            row = rows[f"baichuan2-{size}-{kind}"]
            assert row["huggingface"] == row["modelscope"] == f"baichuan-inc/Baichuan2-{size.upper()}-{kind.capitalize()}"
            assert row["layers"] == (32 if size == "7b" else 40)
    assert "tiny" in rows
    table = cli("models").stdout
    assert "baichuan2-13b-chat" in table and "tiny" in table
    for columns in (80, 160):  # a terminal of 80 columns gets every column too, the repos under the sizes
        table = cli("models", env={"COLUMNS": str(columns)}).stdout
        assert max(len(line.rstrip()) for line in table.splitlines()) <= columns
        assert all(row["huggingface"] in table for row in rows.values() if row["huggingface"]) and "28.6 GB" in table


def test_build_tiny_end_to_end(isolated_home):
    """`orch build tiny`: a verified Q4_K_M, its Modelfile and build.json; no Ollama here, which it says without failing."""
    proc = orch("build", "tiny")
    out = isolated_home / "data" / "orch" / "builds" / "tiny"
    assert "skipped" in proc.stdout and "no Ollama" in proc.stdout
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["build.json", "tiny.Q4_K_M.Modelfile", "tiny.Q4_K_M.gguf"]
    # the demo says it is one, and its replies of noise stop soon
    assert "tiny is a random model that proves the path" in " ".join(proc.stdout.split())
    modelfile = (out / "tiny.Q4_K_M.Modelfile").read_text()
    assert int(re.search(r"^PARAMETER num_predict (\d+)$", modelfile, re.M)[1]) <= 128, "not the 2048 of the real models"
    assert "a random model" in modelfile.splitlines()[0]

    record = build_record(out)
    art = record["artifacts"][0]
    assert art["sha256"] == sha256(out / "tiny.Q4_K_M.gguf") and art["size"] == (out / "tiny.Q4_K_M.gguf").stat().st_size
    assert art["ollama_name"] == "tiny:q4_K_M" and art["verify"]["generated_tokens"] > 0
    src = Path(record["source"]["path"])
    assert record["source"]["files"]["tokenizer.model"]["sha256"] == sha256(src / "tokenizer.model")
    assert "llama-cpp-python 0.3.36" in record["llama_cpp"]["version"]
    assert {"fetch", "llama_cpp", "prepare", "hash", "convert", "quantize:Q4_K_M", "verify:Q4_K_M"} <= set(record["timings"])
    parts = sum(v for k, v in record["timings"].items() if k not in ("total_this_run", "hash"))  # hash runs beside convert
    assert parts <= record["timings"]["total_this_run"] + 0.5, "a fresh build's sequential parts add up to no more than its whole"
    assert record["timings"]["hash"] <= record["timings"]["total_this_run"]
    reg = record["registration"][0]
    assert reg["status"] == "skipped" and reg["message"].startswith("no Ollama answered at http://127.0.0.1:9")
    assert reg["command"].startswith("OLLAMA_HOST=http://127.0.0.1:9 ollama create tiny:q4_K_M -f ")

    info = json.loads(orch("inspect", str(out / "tiny.Q4_K_M.gguf"), "--json").stdout)
    assert (info["architecture"], info["layers"], info["positions"], info["quant"]) == ("baichuan", 32, "rope", "Q4_K_M")
    assert info["chat_markers"] == {"<reserved_106>": 9, "<reserved_107>": 10}
    assert info["add_bos_token"] is False
    assert "chat markers" in orch("inspect", str(out / "tiny.Q4_K_M.gguf")).stdout

    again = json.loads(orch("build", "tiny", "--json").stdout)
    assert set(again["resumed_stages"]) >= {"prepare", "convert", "quantize:Q4_K_M", "verify:Q4_K_M"}
    assert again["artifacts"][0]["sha256"] == art["sha256"]

    forced = json.loads(orch("build", "tiny", "--force", "--json").stdout)
    assert forced["resumed_stages"] == [] and forced["artifacts"][0]["sha256"] == art["sha256"]


def test_name_system_and_several_types_on_the_13b_shape(checkpoint, tmp_path):
    out = tmp_path / "mybot"
    record = json.loads(cli("build", str(checkpoint(40)), "--name", "mybot:v1", "--system", "你是一个乐于助人的助手。",
                             "--quant", "q4_K_M,q8_0", "--no-register", "--dir", str(out), "--json").stdout)
    names = {a["type"]: a["ollama_name"] for a in record["artifacts"]}
    assert names == {"Q4_K_M": "mybot:v1", "Q8_0": "mybot:v1-q8_0"}
    assert record["model"]["positions"] == "alibi" and record["model"]["layers"] == 40
    for a in record["artifacts"]:
        text = (out / a["modelfile"]).read_text()
        assert f"FROM ./{a['file']}" in text
        assert 'SYSTEM """你是一个乐于助人的助手。"""' in text
    info = json.loads(cli("inspect", str(out / record["artifacts"][1]["file"]), "--json").stdout)
    assert (info["positions"], info["quant"]) == ("alibi", "Q8_0")


def test_sharded_safetensors_convert_to_the_same_tensors_as_bin(checkpoint, built, tmp_path):
    """Same weights shipped as three safetensors shards instead of one pickle: the same GGUF tensors."""
    sharded = checkpoint(32, fmt="safetensors", shards=3)
    out = tmp_path / "st"
    cli("build", str(sharded), "--quant", "f32", "--no-register", "--dir", str(out))
    a = {t.name: np.array(t.data) for t in GGUFReader(next(out.glob("*.F32.gguf"))).tensors}
    b = {t.name: np.array(t.data) for t in GGUFReader(next(built(32).glob("*.F32.gguf"))).tensors}
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_inspect_refuses_a_file_that_is_not_gguf(tmp_path):
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"not a gguf at all" * 10)
    proc = cli("inspect", str(bogus), check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and len(proc.stderr.strip().splitlines()) == 1
