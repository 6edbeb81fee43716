"""--imatrix: llama.cpp's own imatrix and quantize programs, built once from the pinned tree, guide the quantization."""

from __future__ import annotations

import json
import shutil

import pytest
from gguf import GGUFReader

from support import build_record, cli


@pytest.fixture(scope="module")
def imatrix_build(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("imatrix") / "out"
    cli("build", str(checkpoint(32)), "--quant", "q4_K_M,iq4_xs", "--imatrix", "--no-register", "--dir", str(out))
    return out


def field(path, key):
    f = GGUFReader(str(path)).get_field(key)
    return None if f is None else f.contents()


def test_a_computed_matrix_guides_every_type_and_the_report_shows_its_gain(imatrix_build):
    record = build_record(imatrix_build)
    assert record["imatrix"]["source"] == "computed on orch's imatrix.txt" and len(record["imatrix"]["sha256"]) == 64
    types = {a["type"]: a for a in record["artifacts"]}
    assert set(types) == {"Q4_K_M", "IQ4_XS"}
    iq = imatrix_build / types["IQ4_XS"]["file"]
    assert json.loads(cli("inspect", str(iq), "--json").stdout)["quant"] == "IQ4_XS"
    for a in types.values():  # llama-quantize records the matrix it used in the GGUF itself
        assert field(imatrix_build / a["file"], "quantize.imatrix.entries_count") > 0
        assert a["verify"]["generated_tokens"] > 0
    q4 = types["Q4_K_M"]["quality"]
    # the matrix (learned on imatrix.txt) must bring q4_K_M closer to the unquantized model on the report's other text
    assert q4["kl_divergence"] < q4["without_imatrix"]["kl_divergence"], q4
    assert "without_imatrix" not in types["IQ4_XS"]["quality"]
    logs = sorted(p.name for p in (imatrix_build / ".orch" / "logs").glob("quantize-Q4_K_M*.log"))
    assert logs == ["quantize-Q4_K_M-no-imatrix.log", "quantize-Q4_K_M.log"]
    assert all("llama_quantize: quantizing" in (imatrix_build / ".orch" / "logs" / n).read_text() for n in logs), \
        "both rows of the comparison come from the same quantizer, llama-quantize"
    assert not list((imatrix_build / ".orch").glob("*no-imatrix*")), "the comparison's extra quantization is not kept"


def test_a_given_matrix_file_gives_the_same_bytes_and_a_rerun_resumes(imatrix_build, checkpoint, tmp_path):
    matrix = tmp_path / "imatrix.gguf"
    shutil.copy(imatrix_build / ".orch" / "imatrix.gguf", matrix)
    out = tmp_path / "given"
    args = ["build", str(checkpoint(32)), "--quant", "q4_K_M", "--imatrix", str(matrix), "--no-eval", "--no-register", "--dir", str(out),
            "--json"]
    record = json.loads(cli(*args).stdout)
    assert record["imatrix"]["source"] == str(matrix)
    computed = next(a for a in build_record(imatrix_build)["artifacts"] if a["type"] == "Q4_K_M")
    # the same matrix quantizes to the same tensors (the metadata differs: it names the matrix file it came from)
    tensors = [{t.name: bytes(t.data) for t in GGUFReader(str(d / f)).tensors}
               for d, f in ((out, record["artifacts"][0]["file"]), (imatrix_build, computed["file"]))]
    assert tensors[0] == tensors[1]
    assert field(out / record["artifacts"][0]["file"], "quantize.imatrix.file") == str(matrix)
    again = json.loads(cli(*args).stdout)
    assert {"convert", "quantize:Q4_K_M"} <= set(again["resumed_stages"])


@pytest.mark.parametrize("args, says", [
    (["--quant", "iq3_m"], "iq3_m needs an importance matrix: add --imatrix"),
    (["--quant", "q4_K_M,iq4_xs"], "iq4_xs needs an importance matrix"),
    (["--quant", "q4_K_M", "--imatrix", "/no/such/imatrix.gguf"], "--imatrix /no/such/imatrix.gguf is not a file"),
    (["--quant", "f16", "--imatrix"], "--imatrix guides quantization"),
])
def test_without_a_matrix_the_i_quants_are_refused_in_one_line(tmp_path, args, says):
    proc = cli("build", "tiny", *args, "--no-register", "--dir", str(tmp_path / "out"), check=False)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and says in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()
