"""`orch build`: run the stages of a BuildPlan, each one resumable and skipped when already done.

fetch -> prepare -> convert (hashing the sources beside it) -> quantize -> verify -> modelfile -> build.json

Registration with a server is the caller's next step (the CLI does it), so a
build never needs one.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator import __version__, modelfile
from orchestrator.build import checkpoint, fetch, quants
from orchestrator.build.llamacpp import provision
from orchestrator.build.plan import BuildPlan
from orchestrator.build.state import BuildState, fingerprint
from orchestrator.errors import OrchError
from orchestrator.events import SILENT, Reporter
from orchestrator.files import nearest_existing, sha256_file, write_text

PAUSE_ENV = "ORCH_DEBUG_PAUSE_AFTER"  # stop dead after a stage (the interruption tests kill the process there)
DISK_MARGIN = 64 << 20


@dataclass
class Run:
    """What this invocation did: stage timings and which stages were already done."""

    timings: dict = field(default_factory=dict)
    resumed: list = field(default_factory=list)


def run_build(plan: BuildPlan, reporter: Reporter = SILENT) -> dict:
    """Build everything the plan names and return the build record (also written to build.json)."""
    run = Run()
    t0 = time.monotonic()
    _check_writable(plan.output)
    remote = plan.source.kind in ("catalog", "repo")
    # a download can be long: say what it is for before it starts (and only once the repo is known to exist)
    fetched = fetch.fetch(plan.source, before_download=lambda: _announce(plan, reporter))
    run.timings["fetch"] = round(time.monotonic() - t0, 3)
    try:
        ckpt = checkpoint.read(fetched.model_dir, chat_hint=plan.source.entry.chat if plan.source.entry else None)
    except OrchError:
        _refuse_corrupt(fetched)  # a file that cannot be read may simply be a corrupt download: say so when it is
        raise
    if plan.system is not None and not ckpt.chat:
        reporter.note("--system on a base model only prefixes the prompt", "warning")
    modelfile.validate_system(plan.system)
    state_path = plan.work / "state.json"
    if plan.force and plan.output.exists():
        shutil.rmtree(plan.work, ignore_errors=True)
        (plan.output / "build.json").unlink(missing_ok=True)
    state = BuildState(state_path)
    _check_disk(plan, ckpt, state)
    if not remote:
        _announce(plan, reporter)

    plan.work.mkdir(parents=True, exist_ok=True)
    _pause_point("fetch")

    sources_fp = fingerprint(str(fetched.model_dir), _stat_key(ckpt))
    prepared = plan.work / "prepared"
    _stage(state, run, "prepare", sources_fp, lambda: _link_prepared(ckpt, prepared))
    _pause_point("prepare")
    if not prepared.is_dir():  # recreated if a cleanup removed it; cheap symlinks
        _link_prepared(ckpt, prepared)

    llama = provision.locate(plan.llama_cpp, reporter=reporter)
    control = [ckpt.markers.user_id, ckpt.markers.assistant_id] if ckpt.markers else []
    base = plan.base_gguf
    convert_fp = fingerprint(sources_fp, llama.version, plan.base_type, ckpt.normhead, control, __version__)

    def quantize_fp(art) -> str:
        return fingerprint(convert_fp, art.quant, llama.version)

    derived = [a for a in plan.artifacts if plan.output / a.gguf != base]
    # the intermediate is deleted once every type is quantized; it is needed again only if one is missing
    base_needed = not all(state.done(f"quantize:{a.quant}", quantize_fp(a), [plan.output / a.gguf]) for a in derived)
    # the sources are hashed (for build.json, and against the hub's sha256) on another core, beside the conversion;
    # the GGUF takes its name only once they are proven, so a corrupt download leaves nothing behind
    stop = threading.Event()
    with ThreadPoolExecutor(1, thread_name_prefix="hash") as pool:
        hashing = pool.submit(_stage, state, run, "hash", sources_fp, lambda: _hash_sources(ckpt, fetched, reporter, stop))
        try:
            base_rec = _stage(state, run, "convert", convert_fp,
                              lambda: _convert(plan, ckpt, llama, prepared, base, control, reporter, ready=hashing.result),
                              outputs=[base] if base_needed else [])
        except BaseException:
            stop.set()
            if isinstance(hash_error := hashing.exception(), OrchError):
                raise hash_error from None  # corrupt sources explain whatever the converter made of them
            raise
        hashes = hashing.result()
    _pause_point("convert")

    artifacts = {}
    for art in plan.artifacts:
        path = plan.output / art.gguf
        if path == base:
            artifacts[art.quant] = base_rec
            continue
        artifacts[art.quant] = _stage(state, run, f"quantize:{art.quant}", quantize_fp(art),
                                      lambda art=art, path=path: _quantize(plan, ckpt, base, path, art.quant, reporter), outputs=[path])
    _pause_point("quantize")
    if base.parent == plan.work and base.exists():
        base.unlink()  # the intermediate is no longer needed once every quantization is done

    checks = {}
    for art in plan.artifacts:
        path = plan.output / art.gguf
        checks[art.quant] = _stage(state, run, f"verify:{art.quant}", fingerprint(artifacts[art.quant]["sha256"], control),
                                   lambda path=path: _verify(path, ckpt, reporter))
    _pause_point("verify")

    license_text = modelfile.license_text(ckpt.path, ckpt.license_files)
    for art in plan.artifacts:
        spec = modelfile.ModelfileSpec(
            gguf=art.gguf, modelfile_name=art.modelfile, ollama_name=art.ollama_name,
            title=f"{plan.source.name} {art.quant} ({'chat' if ckpt.chat else 'base'}, Baichuan {ckpt.generation})",
            source=plan.source.describe(), markers=ckpt.markers.pieces if ckpt.markers else None,
            parameters=ckpt.defaults.as_parameters(),
            system=plan.system, license=license_text)
        write_text(plan.output / art.modelfile, modelfile.render(spec))
    _pause_point("modelfile")

    record = {
        "orch_version": __version__,
        "source": {"kind": plan.source.kind, "spec": plan.source.describe(), "repo": plan.source.repo_id,
                   "hub": plan.source.hub, "revision": fetched.revision, "path": str(fetched.model_dir),
                   "files": hashes["files"]},
        "model": ckpt.summary(),
        "llama_cpp": llama.describe() | {"converter_fixes": base_rec["report"]},
        "artifacts": [
            {"file": a.gguf, "type": a.quant, "size": artifacts[a.quant]["size"], "sha256": artifacts[a.quant]["sha256"],
             "modelfile": a.modelfile, "ollama_name": a.ollama_name, "verify": checks[a.quant]}
            for a in plan.artifacts
        ],
        "timings": {"fetch": run.timings["fetch"]} | {k: state.stages[k]["seconds"] for k in state.stages} | {"total_this_run": round(time.monotonic() - t0, 3)},
        "resumed_stages": run.resumed,
    }
    write_record(plan.output, record)
    return record


def write_record(output: Path, record: dict) -> None:
    """build.json: what was built from what, and how (the caller adds the registration once it has one)."""
    write_text(output / "build.json", json.dumps(record, indent=2, ensure_ascii=False) + "\n")


def _announce(plan: BuildPlan, reporter: Reporter) -> None:
    reporter.note(f"Building {plan.source.name} ({', '.join(plan.quants)}) from {plan.source.describe()}\n  into {plan.output}")


def _stage(state: BuildState, run: Run, key: str, fp: str, work, outputs: list[Path] = ()) -> dict:
    """Run `work` unless a record with this fingerprint exists and its outputs are intact."""
    if (done := state.done(key, fp, outputs)) is not None:
        run.resumed.append(key)
        return done["result"]
    t = time.monotonic()
    result = work()
    seconds = time.monotonic() - t
    run.timings[key] = round(seconds, 3)
    return state.record(key, fp, result, seconds)["result"]


def _pause_point(stage: str) -> None:
    if os.environ.get(PAUSE_ENV) == stage:
        print(f"orch: paused after {stage}", file=sys.stderr, flush=True)
        while True:
            time.sleep(60)


def _stat_key(ckpt) -> list:
    return [(n, (ckpt.path / n).stat().st_size, (ckpt.path / n).stat().st_mtime_ns) for n in ckpt.needed_files()]


class _Stopped(Exception):
    pass


def _hash_sources(ckpt, fetched, reporter: Reporter, stop: threading.Event) -> dict:
    """sha256 of every source file for build.json, checked against the hub's where it gives one.

    Runs beside the conversion at the lowest CPU priority, so it takes only what the converter leaves idle.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)  # this thread only (Linux)
    except (AttributeError, OSError):
        pass
    files = {}
    names = ckpt.needed_files()
    total = sum((ckpt.path / n).stat().st_size for n in names)
    with reporter.task("hash source files", total=total) as task:

        def advance(n: int) -> None:
            if stop.is_set():
                raise _Stopped
            task.advance(n)

        for name in names:
            digest = sha256_file(ckpt.path / name, advance)
            expected = fetched.expected_sha256.get(name)
            if expected and expected != digest:
                raise _corrupt(ckpt.path / name)
            files[name] = {"size": (ckpt.path / name).stat().st_size, "sha256": digest}
    return {"files": files}


def _refuse_corrupt(fetched) -> None:
    for name, expected in fetched.expected_sha256.items():
        path = fetched.model_dir / name
        if path.is_file() and sha256_file(path) != expected:
            raise _corrupt(path)


def _corrupt(path: Path) -> OrchError:
    fetch.discard(path)
    return OrchError(f"{path.name} as downloaded does not match the sha256 the hub publishes for it (a corrupt download); "
                     "the bad copy was removed: run the same command again to download it afresh")


def _link_prepared(ckpt, prepared: Path) -> dict:
    """The converter's view of the checkpoint: symlinks to exactly the files it reads, and no code."""
    tmp = prepared.with_name(prepared.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in ckpt.needed_files():
        (tmp / name).symlink_to((ckpt.path / name).resolve())
    shutil.rmtree(prepared, ignore_errors=True)
    os.replace(tmp, prepared)
    return {"files": ckpt.needed_files()}


def _convert(plan: BuildPlan, ckpt, llama, prepared: Path, base: Path, control: list[int], reporter: Reporter, ready) -> dict:
    from orchestrator.build.llamacpp.convert import convert

    base.parent.mkdir(parents=True, exist_ok=True)
    report = convert(llama, prepared, base, plan.base_type, model_name=plan.source.name, normhead=ckpt.normhead, control_ids=control,
                     expected_bytes=quants.size_bytes(ckpt.n_params, plan.base_type),
                     log=plan.work / "logs" / "convert.log", reporter=reporter, ready=ready)
    if ckpt.normhead and not report.get("normhead_applied"):
        raise OrchError("the converter never saw lm_head.weight, so NormHead was not applied: the checkpoint lacks an output head")
    # an intermediate in .orch is never published, so it is not worth a hash: the convert fingerprint names it
    return _file_record(base, hash=base.parent != plan.work) | {"report": report}


def _quantize(plan: BuildPlan, ckpt, base: Path, path: Path, quant: str, reporter: Reporter) -> dict:
    from orchestrator.build.llamacpp.quantize import quantize

    quantize(base, path, quant, expected_bytes=quants.size_bytes(ckpt.n_params, quant),
             log=plan.work / "logs" / f"quantize-{quant}.log", reporter=reporter)
    return _file_record(path)


def _verify(path: Path, ckpt, reporter: Reporter) -> dict:
    from orchestrator.build.verify import verify

    reporter.note(f"verifying {path.name}: chat markers, a few generated tokens")
    return verify(path, layers=ckpt.layers, markers=ckpt.markers, tokenizer=ckpt.path / "tokenizer.model",
                  eos_id=int(ckpt.config.get("eos_token_id", 2)))


def _file_record(path: Path, hash: bool = True) -> dict:
    return {"size": path.stat().st_size} | ({"sha256": sha256_file(path)} if hash else {})


def _check_writable(output: Path) -> None:
    probe = nearest_existing(output)
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise OrchError(f"cannot write to {output} ({probe} is not a writable directory): pass --output with a directory you can write to")


def _check_disk(plan: BuildPlan, ckpt, state: BuildState) -> None:
    """Refuse before writing anything when the outputs still to make cannot fit."""
    need = 0
    for art in plan.artifacts:
        if not (plan.output / art.gguf).is_file():
            need += quants.size_bytes(ckpt.n_params, art.quant)
    base = plan.base_gguf
    if base.parent == plan.work and not base.exists() and any(not (plan.output / a.gguf).is_file() for a in plan.artifacts):
        need += quants.size_bytes(ckpt.n_params, plan.base_type)
    if need == 0:
        return
    probe = nearest_existing(plan.output)
    free = shutil.disk_usage(probe).free
    if free < need + DISK_MARGIN:
        from rich.filesize import decimal

        raise OrchError(f"not enough free disk in {probe}: the build needs about {decimal(need + DISK_MARGIN)}, "
                        f"{decimal(free)} is free: free some space or pass --output on a larger disk")
