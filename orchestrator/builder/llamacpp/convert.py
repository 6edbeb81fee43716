"""llama.cpp's converter, run through orch's shim (crash fix, control markers, space prefix, NormHead)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

from orchestrator.builder.llamacpp.process import run_watched
from orchestrator.builder.llamacpp.provision import LlamaCpp
from orchestrator.events import SILENT, Reporter
from orchestrator.files import atomic_path

SHIM = "orchestrator.builder.llamacpp.shim"


def converter_command(llama: LlamaCpp, model_dir: Path, outfile: Path, outtype: str, *, model_name: str, normhead: bool,
                      control_ids: list[int], report: Path, adapter: Path | None = None, generation: int | None = None) -> list[str]:
    cmd = [sys.executable, "-m", SHIM, "--llama-cpp", str(llama.root), "--report", str(report)]
    if generation is not None:
        cmd += ["--generation", str(generation)]
    if normhead:
        cmd.append("--normhead")
    if adapter is not None:
        cmd += ["--adapter", str(adapter)]
    for tid in control_ids:
        cmd += ["--control-token", str(tid)]
    return cmd + ["--", str(model_dir), "--outfile", str(outfile), "--outtype", outtype.lower(), "--model-name", model_name]


def convert(llama: LlamaCpp, model_dir: Path, final: Path, outtype: str, *, model_name: str, normhead: bool, control_ids: list[int],
            expected_bytes: int, log: Path, reporter: Reporter = SILENT, ready: Callable[[], None] | None = None,
            adapter: Path | None = None, generation: int | None = None) -> dict:
    """Write `final` (a GGUF of `outtype`) and return the shim's report of what it fixed.

    `ready` is called before the GGUF takes its final name: a failure there
    (the sources' hashes, say) leaves no file behind.
    """
    report = log.with_suffix(".report.json")
    report.unlink(missing_ok=True)
    with atomic_path(final, ready=ready) as tmp:
        cmd = converter_command(llama, model_dir, tmp, outtype, model_name=model_name, normhead=normhead, control_ids=control_ids,
                                report=report, adapter=adapter, generation=generation)
        run_watched(cmd, watch=tmp, expected_bytes=expected_bytes, what=f"convert to {outtype}", log=log, reporter=reporter)
    return json.loads(report.read_text())
