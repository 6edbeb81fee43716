"""Kill a real `orch build` process with SIGKILL at each stage boundary, run it again, and get the same artifacts."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import ORCH, orch

STAGES = ["fetch", "prepare", "convert", "quantize", "verify", "modelfile"]
QUANTS = "q8_0,q4_K_M"


def final_files(out: Path) -> dict[str, str]:
    """Every file under its final name in the build directory (bookkeeping under .orch aside), with its sha256."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir()) if p.is_file()}


def artifacts(out: Path) -> dict[str, str]:
    return {k: v for k, v in final_files(out).items() if k != "build.json"}


def start(model_dir: Path, out: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([str(ORCH), "build", str(model_dir), "--quant", QUANTS, "--no-register", "--dir", str(out)],
                            stdout=subprocess.DEVNULL, stderr=log.open("w"))


def paused(model_dir: Path, out: Path, log: Path, stage: str) -> subprocess.Popen:
    """The build `orch build` runs (tests/paused_child.py makes the same library calls), stopped after `stage`."""
    child = Path(__file__).with_name("paused_child.py")
    return subprocess.Popen([sys.executable, str(child), f"build {stage}", str(out.parent / "never"), "build", str(model_dir), str(out),
                             QUANTS], stdout=subprocess.DEVNULL, stderr=log.open("w"))


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"orch build exited {proc.returncode} before the kill point"
        assert time.monotonic() < deadline, "kill point never reached"
        time.sleep(0.05)


def resume(model_dir: Path, out: Path) -> dict:
    proc = orch("build", str(model_dir), "--quant", QUANTS, "--no-register", "--dir", str(out), "--json")
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def uninterrupted(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted") / "build"
    resume(checkpoint(32), out)
    return artifacts(out)


def done_stages(out: Path) -> set[str]:
    """The stages the build's state records as done (quantize:q8_0 and the like counted as quantize)."""
    state = out / ".orch" / "state.json"
    stages = json.loads(state.read_text()).get("stages", {}) if state.is_file() else {}
    return {name.split(":")[0] for name in stages}


def test_killed_after_every_stage_in_turn_resumes_to_the_same_artifacts(checkpoint, uninterrupted, tmp_path):
    """SIGKILL after each stage boundary, one after the other: every run resumes from what the one killed before it
    left, redoing none of its finished stages, and the last gives the uninterrupted build's artifacts."""
    out = tmp_path / "build"
    for stage in STAGES:
        log = tmp_path / f"after-{stage}.log"
        proc = paused(checkpoint(32), out, log, stage)
        try:
            wait_for(lambda: f"paused after build {stage}" in log.read_text(), proc)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert "build.json" not in final_files(out) if out.exists() else True
        groups = {"prepare", "convert", "quantize", "verify"}
        assert done_stages(out) & groups == set(STAGES[1:STAGES.index(stage) + 1]) & groups, stage

    record = resume(checkpoint(32), out)
    assert artifacts(out) == uninterrupted
    assert {r.split(":")[0] for r in record["resumed_stages"]} >= {"prepare", "convert", "quantize", "verify"}, "nothing was redone"


def test_killed_mid_conversion_leaves_no_file_under_a_final_name(checkpoint, uninterrupted, tmp_path):
    out, log = tmp_path / "build", tmp_path / "stderr.log"
    proc = start(checkpoint(32), out, log)
    partials = lambda: [p for p in out.rglob("*.partial") if p.is_file() and p.stat().st_size > 1 << 20]  # noqa: E731
    try:
        wait_for(lambda: out.exists() and partials(), proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not list(out.rglob("*.gguf")), "a GGUF appeared under its final name before it was complete"
    assert final_files(out) == {}

    resume(checkpoint(32), out)
    assert artifacts(out) == uninterrupted
    assert not list(out.rglob("*.partial"))
