"""q8_0 and q4_K_M builds load and generate on any CPU; their top-1 agreement with f16 is measured and kept as an artifact."""

from __future__ import annotations

import json

import numpy as np
import pytest

from support import build_record, generate, gguf_logits

PROMPTS = [[1, *range(40, 72)], [1, *range(300, 340, 2)], [1, *range(700, 1000, 9)]]


@pytest.fixture(scope="module")
def agreement(built, artifacts_dir):
    out = built(32)
    f16 = gguf_logits(next(out.glob("*.F16.gguf")), PROMPTS)
    figures = {}
    for quant in ("Q8_0", "Q4_K_M"):
        got = gguf_logits(next(out.glob(f"*.{quant}.gguf")), PROMPTS)
        same = sum(int((g.argmax(-1) == w.argmax(-1)).sum()) for g, w in zip(got, f16))
        total = sum(len(w) for w in f16)
        cos = min(float(min(gi @ wi / (np.linalg.norm(gi) * np.linalg.norm(wi)) for gi, wi in zip(g, w))) for g, w in zip(got, f16))
        figures[quant] = {"top1_agreement_with_f16": round(same / total, 4), "positions": total, "min_cosine_with_f16": round(cos, 5)}
    (artifacts_dir / "quant-agreement.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(f"\ntop-1 agreement with F16 (32-layer tiny model): {figures}")
    return figures


@pytest.mark.parametrize("repack", [True, False], ids=["repacked", "mapped"])
@pytest.mark.parametrize("quant", ["Q8_0", "Q4_K_M"])
def test_quantized_build_generates_with_and_without_weight_repacking(built, quant, repack):
    """What Ollama's llama-server does (repacking the weights for this CPU: AVX2, AVX-512, AMX) and what orch's checks do
    (weights as mapped): both generate, in a child process whose crash names this machine's CPU features."""
    out = built(32)
    record = next(a for a in build_record(out)["artifacts"] if a["type"] == quant)
    assert record["verify"]["generated_tokens"] > 0
    done = generate(out / record["file"], "<reserved_106>你好<reserved_107>", 8, repack=repack)
    assert done["file_type"] == {"Q8_0": "7", "Q4_K_M": "15"}[quant]
    assert done["usage"]["completion_tokens"] > 0, "no tokens generated"


def test_no_llama_cpp_orch_runs_carries_the_amx_path():
    """llama.cpp's AMX kernels crash on AMX CPUs when GCC < 13 compiled them (docs/upstream/amx-tile-config.md):
    orch compiles llama.cpp without them, so no tile instruction is in the libraries its bindings load, nor in the
    programs and libraries the real Ollama runs."""
    import shutil
    import subprocess
    from pathlib import Path

    from orchestrator.builder.llamacpp import cpu
    from orchestrator.builder.llamacpp.runtime import bindings
    from support import real_ollama_binary

    llama_cpp = bindings()
    assert not cpu.runtime_has_amx(), llama_cpp.llama_print_system_info().decode()
    objdump = shutil.which("objdump")
    assert objdump, "objdump (binutils) is needed: apt-get install binutils"
    libs = sorted((Path(llama_cpp.__file__).parent / "lib").glob("*.so"))
    assert {lib.name for lib in libs} >= {"libllama.so", "libggml.so", "libggml-base.so", "libggml-cpu.so"}, libs
    libs += sorted(p for p in (real_ollama_binary().resolve().parent.parent / "lib" / "ollama").iterdir() if p.is_file())
    for lib in libs:
        text = subprocess.run([objdump, "-d", "--no-show-raw-insn", str(lib)], capture_output=True, text=True, check=True).stdout
        assert "ldtilecfg" not in text and "tdpbssd" not in text, f"{lib.name} holds AMX tile instructions"


def test_one_compile_serves_the_bindings_the_programs_and_the_real_ollama(llama_tree):
    """llama.cpp is compiled once: the library the bindings load is the very one beside llama-quantize and
    llama-server, and beside the real Ollama's llama-server (which orch install-ollama copied from that build)."""
    import hashlib

    from orchestrator.builder.llamacpp import provision, runtime, tools
    from support import real_ollama_binary

    def digest(path):
        return hashlib.sha256(path.read_bytes()).hexdigest()

    programs = tools.locate(provision.locate())
    bindings = runtime.locate() / runtime.PACKAGE / "lib" / "libllama.so"
    ollama = real_ollama_binary().resolve().parent.parent / "lib" / "ollama"
    assert digest(bindings) == digest(programs.server.with_name("libllama.so")) == digest(ollama / "libllama.so")
    assert {p.name for p in programs.libraries} <= {p.name for p in ollama.iterdir()}, "Ollama's llama-server has every library"


def test_quantized_outputs_mostly_agree_with_f16(agreement):
    """q8_0 is nearly lossless; q4_K_M, on a model this small, must still track f16 far above chance (1/1024)."""
    assert agreement["Q8_0"]["top1_agreement_with_f16"] >= 0.9
    assert agreement["Q4_K_M"]["top1_agreement_with_f16"] >= 0.5
    assert agreement["Q8_0"]["min_cosine_with_f16"] > agreement["Q4_K_M"]["min_cosine_with_f16"]
