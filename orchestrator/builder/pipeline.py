"""`orch build`: run the stages of a BuildPlan, each one resumable and skipped when already done.

fetch -> prepare -> convert (hashing the sources beside it; an adapter merged as the weights stream)
      -> importance matrix (optional) -> quantize -> quality report -> verify -> modelfile -> build.json

Each stage is a function that takes values and returns one; what a stage's
fingerprint depends on is computed once, in Keys, from the plan and the
sources, so no stage reads state another left behind. Registration with a
server is the caller's next step (the CLI does it), so a build never needs one.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator import __version__, modelfile
from orchestrator.builder import adapter as adapters
from orchestrator.builder import checkpoint, fetch, quality, quants
from orchestrator.builder.catalog import TINY_IS_A_DEMO
from orchestrator.builder.llamacpp import provision, runtime
from orchestrator.builder.plan import BuildPlan
from orchestrator.builder.state import BuildState, fingerprint
from orchestrator.errors import OrchError
from orchestrator.events import SILENT, Reporter
from orchestrator.files import nearest_existing, sha256_file, write_text

DISK_MARGIN = 64 << 20
GAIN_TYPE = "Q4_K_M"  # with --imatrix, the report also measures this type made without it


class QualityBelowThreshold(OrchError):
    """A quantized type agrees with the unquantized model less often than --min-top1 asks."""


@dataclass(frozen=True)
class Sources:
    """What the build reads, known once the checkpoint (and the adapter) are read and checked."""

    fetched: fetch.Fetched
    ckpt: checkpoint.Checkpoint
    adapter: adapters.Adapter | None
    adapter_source: fetch.Fetched | None

    @property
    def control(self) -> list[int]:
        """The chat markers' ids: the tokens the converter types as control."""
        m = self.ckpt.markers
        return [m.user_id, m.assistant_id] if m else []

    def fingerprint(self) -> str:
        """Of the names, sizes and mtimes of every file the build reads."""
        return fingerprint(str(self.fetched.model_dir), _stat_key(self.ckpt.path, self.ckpt.needed_files()),
                           _stat_key(self.adapter.path, self.adapter.files()) if self.adapter else None)


@dataclass(frozen=True)
class Keys:
    """Every stage's fingerprint, from the plan, the sources, the llama.cpp tree and the matrix's sha256 (None without one)."""

    sources: str
    convert: str
    imatrix_input: str  # what a computed matrix depends on
    matrix: str | None
    quantizer: str  # which program quantizes: one per build, so the report's rows compare like with like

    @classmethod
    def of(cls, plan: BuildPlan, src: Sources, llama: provision.LlamaCpp, matrix: str | None) -> "Keys":
        sources = src.fingerprint()
        convert = fingerprint(sources, llama.version, plan.base_type, src.ckpt.normhead, src.control, __version__)
        quantizer = "llama-quantize" if plan.imatrix else "llama-cpp-python"
        return cls(sources, convert, fingerprint(convert, sha256_file(quality.IMATRIX_TEXT)), matrix, quantizer)

    def quantize(self, quant: str) -> str:
        return fingerprint(self.convert, quant, self.quantizer, *([self.matrix] if self.matrix else []))

    def quality(self, plan: BuildPlan) -> str:
        """The types' own fingerprints (which fix their bytes), the budget, the text."""
        return fingerprint(self.convert, [self.quantize(a.quant) for a in measured(plan)], plan.eval_tokens,
                           sha256_file(quality.CALIBRATION))

    def measurement(self, plan: BuildPlan, quant: str) -> str:
        """One type's figures: a --quant list that changes keeps those of the types it still names."""
        return fingerprint(self.convert, self.quantize(quant), plan.eval_tokens, sha256_file(quality.CALIBRATION))


@dataclass
class Stages:
    """Runs a stage unless .orch/state.json has it done with the same fingerprint; keeps what this run did and how long."""

    state: BuildState
    timings: dict = field(default_factory=dict)
    resumed: list = field(default_factory=list)

    def run(self, key: str, fp: str, work, outputs: list[Path] = ()) -> dict:
        if (done := self.state.done(key, fp, outputs)) is not None:
            self.resumed.append(key)
            return done["result"]
        t = time.monotonic()
        result = work()
        seconds = time.monotonic() - t
        self.timings[key] = round(seconds, 3)
        return self.state.record(key, fp, result, seconds)["result"]


def measured(plan: BuildPlan) -> list:
    """The artifacts the quality report covers: every quantized type (none with --no-eval)."""
    return [a for a in plan.artifacts if a.quant in quants.QUANTIZED] if plan.evaluate else []


def baseline(plan: BuildPlan) -> Path:
    """With an importance matrix, q4_K_M made without one too, for the report to show what the matrix gained."""
    return plan.work / f"{plan.stem}.{GAIN_TYPE}.no-imatrix.gguf"


def write_record(output: Path, record: dict) -> None:
    """build.json: what was built from what, and how (the caller adds the registration once it has one)."""
    write_text(output / "build.json", json.dumps(record, indent=2, ensure_ascii=False) + "\n")


def run_build(plan: BuildPlan, reporter: Reporter = SILENT) -> dict:
    """Build everything the plan names and return the build record (also written to build.json)."""
    t0 = time.monotonic()
    _check_writable(plan.output)
    _refuse_foreign(plan.output)
    src = read_sources(plan, reporter)
    fetch_seconds = round(time.monotonic() - t0, 3)
    if plan.force and plan.output.exists():
        shutil.rmtree(plan.work, ignore_errors=True)
        (plan.output / "build.json").unlink(missing_ok=True)
    stages = Stages(BuildState(plan.work / "state.json"))
    check_disk(plan, src.ckpt)
    if plan.source.kind not in ("catalog", "repo"):
        announce(plan, reporter)
    plan.work.mkdir(parents=True, exist_ok=True)
    reporter.reached("build fetch")

    prepared = plan.work / "prepared"
    stages.run("prepare", src.fingerprint(), lambda: link_prepared(src.ckpt, prepared))
    reporter.reached("build prepare")
    if not prepared.is_dir():  # recreated if a cleanup removed it; cheap symlinks
        link_prepared(src.ckpt, prepared)

    t = time.monotonic()
    llama = provision.locate(plan.llama_cpp, reporter=reporter)
    outside = {"llama_cpp": round(time.monotonic() - t, 3)}  # fetched once per machine: what a first build waits for
    matrix = known_matrix(plan, stages.state, Keys.of(plan, src, llama, None).imatrix_input)
    keys = Keys.of(plan, src, llama, matrix and matrix["sha256"])
    base_rec, hashes = convert_beside_hashing(plan, src, llama, keys, stages, prepared, reporter,
                                              base_needed=base_needed(plan, keys, stages.state, matrix))
    reporter.reached("build convert")
    t = time.monotonic()
    runtime.locate(reporter)  # llama.cpp's libraries, which quantize, verify and the report load: compiled once per machine
    outside["llama_runtime"] = round(time.monotonic() - t, 3)
    t = time.monotonic()
    tools = llama_tools(llama, reporter) if plan.imatrix else None
    outside["llama_tools"] = round(time.monotonic() - t, 3)  # compiled once per machine
    if plan.imatrix == "compute" and matrix is None:
        matrix = stages.run("imatrix", keys.imatrix_input, lambda: compute_imatrix(plan, src, tools, reporter))
        keys = Keys.of(plan, src, llama, matrix["sha256"])

    artifacts = {}
    for art in plan.artifacts:
        path = plan.output / art.gguf
        if path == plan.base_gguf:
            artifacts[art.quant] = base_rec
            continue
        artifacts[art.quant] = stages.run(f"quantize:{art.quant}", keys.quantize(art.quant),
                                          lambda art=art, path=path: quantize(plan, src, path, art.quant, matrix, tools, reporter),
                                          outputs=[path])
    reporter.reached("build quantize")
    report = stages.run("quality", keys.quality(plan), lambda: evaluate(plan, src, keys, matrix, tools, reporter)) if measured(plan) else {}
    baseline(plan).unlink(missing_ok=True)
    # the unquantized GGUF stays in .orch/: another --quant list quantizes it again instead of converting (at 7B a
    # 15 GB F16, which the build summary names with its size; deleting .orch/ frees it)

    checks = {}
    for art in plan.artifacts:
        checks[art.quant] = stages.run(f"verify:{art.quant}", fingerprint(artifacts[art.quant]["sha256"], src.control),
                                       lambda art=art: verify(plan, src.ckpt, plan.output / art.gguf, reporter))
    reporter.reached("build verify")

    write_modelfiles(plan, src.ckpt)
    reporter.reached("build modelfile")
    timings = {"fetch": fetch_seconds} | outside | {k: v["seconds"] for k, v in stages.state.stages.items()}
    record = make_record(plan, src, llama, base_rec, hashes, artifacts, checks, report, matrix,
                         timings | {"total_this_run": round(time.monotonic() - t0, 3)}, stages.resumed)
    write_record(plan.output, record)
    check_quality(plan, report)
    return record


def read_sources(plan: BuildPlan, reporter: Reporter) -> Sources:
    """Fetch the checkpoint (and adapter) and read them, refusing anything wrong before a file is written."""
    # a download can be long: say what it is for before it starts (and only once the repo is known to exist)
    fetched = fetch.fetch(plan.source, before_download=lambda: announce(plan, reporter))
    try:
        ckpt = checkpoint.read(fetched.model_dir, chat_hint=plan.source.entry.chat if plan.source.entry else None)
    except OrchError:
        _refuse_corrupt(fetched)  # a file that cannot be read may simply be a corrupt download: say so when it is
        raise
    adapter, adapter_source = read_adapter(plan, ckpt)
    if plan.system is not None and not ckpt.chat:
        reporter.note("--system on a base model only prefixes the prompt", "warning")
    modelfile.validate_system(plan.system)
    return Sources(fetched, ckpt, adapter, adapter_source)


def read_adapter(plan: BuildPlan, ckpt: checkpoint.Checkpoint):
    """The LoRA adapter, fetched and checked against the base's tensor shapes before anything is written."""
    if not plan.adapter:
        return None, None
    fetched = fetch.fetch_adapter(plan.adapter, plan.source.hub or "hf", None)
    shapes = checkpoint.tensor_shapes(ckpt.path, ckpt.weight_format, list(ckpt.weight_files))
    adapter = adapters.read(fetched.model_dir, shapes)
    for name in adapter.files():
        expected = fetched.expected_sha256.get(name)
        if expected and sha256_file(adapter.path / name) != expected:
            raise _corrupt(adapter.path / name)
    return adapter, fetched


def announce(plan: BuildPlan, reporter: Reporter) -> None:
    what = f"{plan.source.name} with the adapter {plan.adapter}" if plan.adapter else plan.source.name
    reporter.note(f"Building {what} ({', '.join(plan.quants)}) from {plan.source.describe()}\n  into {plan.output}")


def known_matrix(plan: BuildPlan, state: BuildState, imatrix_input: str | None) -> dict | None:
    """The importance matrix: the file given, or the one an earlier run computed (None until it is computed)."""
    if not plan.imatrix:
        return None
    if plan.imatrix != "compute":
        path = Path(plan.imatrix)
        return {"source": str(path), "path": str(path), "sha256": sha256_file(path)}
    if imatrix_input is None:
        return None
    done = state.done("imatrix", imatrix_input, [plan.work / "imatrix.gguf"])
    return done["result"] if done else None


def base_needed(plan: BuildPlan, keys: Keys, state: BuildState, matrix: dict | None) -> bool:
    """Whether the unquantized GGUF must exist after conversion: something still to make or measure reads it."""
    derived = [a for a in plan.artifacts if plan.output / a.gguf != plan.base_gguf]
    needed = not all(state.done(f"quantize:{a.quant}", keys.quantize(a.quant), [plan.output / a.gguf]) for a in derived)
    needed |= bool(measured(plan)) and state.done("quality", keys.quality(plan)) is None
    return needed or (plan.imatrix == "compute" and matrix is None)  # the matrix is computed on it


def link_prepared(ckpt: checkpoint.Checkpoint, prepared: Path) -> dict:
    """The converter's view of the checkpoint: symlinks to exactly the files it reads, and no code."""
    names = ckpt.needed_files()
    tmp = prepared.with_name(prepared.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in names:
        (tmp / name).symlink_to((ckpt.path / name).resolve())
    shutil.rmtree(prepared, ignore_errors=True)
    os.replace(tmp, prepared)
    return {"files": names}


def convert_beside_hashing(plan: BuildPlan, src: Sources, llama: provision.LlamaCpp, keys: Keys, stages: Stages, prepared: Path,
                           reporter: Reporter, *, base_needed: bool) -> tuple[dict, dict]:
    """Convert while the sources are hashed on the other core (for build.json, and against the hub's sha256).

    The GGUF takes its name only once the hashes are proven, so a corrupt
    download leaves nothing behind.
    """
    stop = threading.Event()
    with ThreadPoolExecutor(1, thread_name_prefix="hash") as pool:
        hashing = pool.submit(stages.run, "hash", keys.sources, lambda: hash_sources(src, stop, reporter))
        try:
            base_rec = stages.run("convert", keys.convert, lambda: convert(plan, src, llama, prepared, hashing.result, reporter),
                                  outputs=[plan.base_gguf] if base_needed else [])
        except BaseException:
            stop.set()
            if isinstance(hash_error := hashing.exception(), OrchError):
                raise hash_error from None  # corrupt sources explain whatever the converter made of them
            raise
        return base_rec, hashing.result()


def hash_sources(src: Sources, stop: threading.Event, reporter: Reporter) -> dict:
    """sha256 of every source file (the adapter's too) for build.json, checked against the hub's where it gives one.

    Runs beside the conversion at the lowest CPU priority, so it takes only what the converter leaves idle.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)  # this thread only (Linux)
    except (AttributeError, OSError):
        pass
    groups = [(src.ckpt.path, src.ckpt.needed_files(), src.fetched.expected_sha256)]
    if src.adapter:
        groups.append((src.adapter.path, src.adapter.files(), src.adapter_source.expected_sha256))
    total = sum((d / n).stat().st_size for d, names, _ in groups for n in names)
    out: list[dict] = []
    with reporter.task("hash source files", total=total) as task:

        def advance(n: int) -> None:
            if stop.is_set():
                raise _Stopped
            task.advance(n)

        for directory, names, expected_sha in groups:
            files = {}
            for name in names:
                digest = sha256_file(directory / name, advance)
                expected = expected_sha.get(name)
                if expected and expected != digest:
                    raise _corrupt(directory / name)
                files[name] = {"size": (directory / name).stat().st_size, "sha256": digest}
            out.append(files)
    return {"files": out[0], "adapter_files": out[1] if len(out) > 1 else {}}


def convert(plan: BuildPlan, src: Sources, llama: provision.LlamaCpp, prepared: Path, ready, reporter: Reporter) -> dict:
    from orchestrator.builder.llamacpp.convert import convert as run_converter

    ckpt, base = src.ckpt, plan.base_gguf
    base.parent.mkdir(parents=True, exist_ok=True)
    report = run_converter(llama, prepared, base, plan.base_type, model_name=plan.source.name, normhead=ckpt.normhead,
                           control_ids=src.control, adapter=src.adapter.path if src.adapter else None, generation=ckpt.generation,
                           expected_bytes=quants.size_bytes(ckpt.n_params, plan.base_type),
                           log=plan.work / "logs" / "convert.log", reporter=reporter, ready=ready)
    if ckpt.normhead and not report.get("normhead_applied"):
        raise OrchError("the converter never saw lm_head.weight, so NormHead was not applied: the checkpoint lacks an output head")
    if src.adapter and report.get("adapter_merged", 0) != len(src.adapter.pairs):
        raise OrchError(f"the adapter changes {len(src.adapter.pairs)} weights but the converter merged "
                        f"{report.get('adapter_merged', 0)}: report this as an orch bug")
    # an intermediate in .orch is never published, so it is not worth a hash: the convert fingerprint names it
    return _file_record(base, hash=base.parent != plan.work) | {"report": report}


def llama_tools(llama: provision.LlamaCpp, reporter: Reporter):
    """llama-imatrix and llama-quantize, from the same compile as the libraries (a build with a matrix quantizes with them)."""
    from orchestrator.builder.llamacpp import tools

    return tools.locate(llama, reporter=reporter)


def compute_imatrix(plan: BuildPlan, src: Sources, tools, reporter: Reporter) -> dict:
    """llama.cpp's llama-imatrix over orch's imatrix.txt, run on the unquantized GGUF."""
    from orchestrator.builder.llamacpp import tools as llama_tools_module

    target = plan.work / "imatrix.gguf"
    n = len(quality.calibration_tokens(src.ckpt.path / "tokenizer.model", 1 << 20, text=quality.IMATRIX_TEXT))
    llama_tools_module.compute_imatrix(tools, plan.base_gguf, quality.IMATRIX_TEXT, n, target,
                                       log=plan.work / "logs" / "imatrix.log", reporter=reporter)
    return {"source": "computed on orch's imatrix.txt", "path": str(target), "sha256": sha256_file(target),
            "size": target.stat().st_size, "tokens": n}


def quantize(plan: BuildPlan, src: Sources, path: Path, quant: str, matrix: dict | None, tools, reporter: Reporter) -> dict:
    """One quantizer per build: llama-quantize (the matrix's program) when the build has a matrix, else llama-cpp-python's."""
    expected = quants.size_bytes(src.ckpt.n_params, quant)
    log = plan.work / "logs" / f"quantize-{quant}{'-no-imatrix' if tools and not matrix else ''}.log"
    if tools is not None:
        from orchestrator.builder.llamacpp import tools as llama_tools_module

        llama_tools_module.quantize(tools, plan.base_gguf, path, quant, Path(matrix["path"]) if matrix else None,
                                    expected_bytes=expected, log=log, reporter=reporter)
    else:
        from orchestrator.builder.llamacpp.quantize import quantize as quantize_in_child

        quantize_in_child(plan.base_gguf, path, quant, expected_bytes=expected, log=log, reporter=reporter)
    return _file_record(path)


def evaluate(plan: BuildPlan, src: Sources, keys: Keys, matrix: dict | None, tools, reporter: Reporter) -> dict:
    """The report for every measured type; a type measured before on the same bytes, budget and text keeps its figures
    (.orch/quality-figures.json), so a --quant list that grows measures only what it adds."""
    tokens = quality.calibration_tokens(src.ckpt.path / "tokenizer.model", plan.eval_tokens, src.ckpt.bos_id)
    known_file = plan.work / "quality-figures.json"
    known = json.loads(known_file.read_text()) if known_file.is_file() else {}
    wanted = {a.quant: keys.measurement(plan, a.quant) for a in measured(plan)}
    to_measure = {a.quant: plan.output / a.gguf for a in measured(plan) if wanted[a.quant] not in known}
    if matrix and GAIN_TYPE in to_measure:
        quantize(plan, src, baseline(plan), GAIN_TYPE, None, tools, reporter)
        to_measure[f"{GAIN_TYPE} without imatrix"] = baseline(plan)
    if to_measure:
        figures = quality.evaluate(plan.base_gguf, to_measure, tokens, work=plan.work, reporter=reporter)
        if (without := figures.pop(f"{GAIN_TYPE} without imatrix", None)) is not None:
            figures[GAIN_TYPE]["without_imatrix"] = without
        known |= {wanted[q]: f for q, f in figures.items()}
        write_text(known_file, json.dumps(known, indent=2))
    return {"calibration": quality.describe(tokens) | {"reference": plan.base_type}, "types": {q: known[fp] for q, fp in wanted.items()}}


def verify(plan: BuildPlan, ckpt: checkpoint.Checkpoint, path: Path, reporter: Reporter) -> dict:
    """The GGUF's checks (verify.py), in a child process: llama.cpp's memory and any crash of it stay out of the build's."""
    from orchestrator.builder import verify as verifier

    reporter.note(f"verifying {path.name}: chat markers, a few generated tokens")
    return verifier.in_child(path, layers=ckpt.layers, markers=ckpt.markers, tokenizer=ckpt.path / "tokenizer.model",
                             eos_id=ckpt.eos_id, work=plan.work, reporter=reporter)


def write_modelfiles(plan: BuildPlan, ckpt: checkpoint.Checkpoint) -> None:
    license_text = modelfile.license_text(ckpt.path, ckpt.license_files)
    demo = plan.source.kind == "tiny"
    for art in plan.artifacts:
        spec = modelfile.ModelfileSpec(
            gguf=art.gguf, modelfile_name=art.modelfile, ollama_name=art.ollama_name,
            title=f"{plan.stem} {art.quant} ({'chat' if ckpt.chat else 'base'}, Baichuan {ckpt.generation})"
                  + (f": {TINY_IS_A_DEMO}" if demo else ""),
            source=plan.source.describe() + (f" with the LoRA adapter {plan.adapter}" if plan.adapter else ""),
            markers=ckpt.markers.pieces if ckpt.markers else None, parameters=ckpt.defaults.as_parameters(),
            system=plan.system, license=license_text)
        write_text(plan.output / art.modelfile, modelfile.render(spec))


def make_record(plan: BuildPlan, src: Sources, llama: provision.LlamaCpp, base_rec: dict, hashes: dict, artifacts: dict, checks: dict, report: dict,
                matrix: dict | None, timings: dict, resumed: list) -> dict:
    fetched = src.fetched
    record = {
        "orch_version": __version__,
        "source": {"kind": plan.source.kind, "spec": plan.source.describe(), "repo": plan.source.repo_id,
                   "hub": plan.source.hub, "revision": fetched.revision, "path": str(fetched.model_dir), "files": hashes["files"]},
        "model": src.ckpt.summary(),
        "llama_cpp": llama.describe() | {"converter_fixes": base_rec["report"]},
        "artifacts": [
            {"file": a.gguf, "type": a.quant, "size": artifacts[a.quant]["size"], "sha256": artifacts[a.quant]["sha256"],
             "modelfile": a.modelfile, "ollama_name": a.ollama_name, "verify": checks[a.quant]}
            | _identity(plan.output / a.gguf)
            | ({"quality": report["types"][a.quant]} if a.quant in report.get("types", {}) else {})
            for a in plan.artifacts
        ],
        "timings": timings,
        "resumed_stages": resumed,
    }
    if report:
        record["quality"] = report["calibration"]
    if matrix:
        record["imatrix"] = {k: v for k, v in matrix.items() if k != "path"}
    if src.adapter:
        record["adapter"] = {"spec": plan.adapter, "path": str(src.adapter.path), "revision": src.adapter_source.revision,
                             "files": hashes["adapter_files"], "config": src.adapter.summary()}
    return record


def check_quality(plan: BuildPlan, report: dict) -> None:
    if plan.min_top1 is None:
        return
    low = {q: f["top1_agreement"] for q, f in report["types"].items() if f["top1_agreement"] < plan.min_top1}
    if low:
        worst = min(low, key=low.get)
        raise QualityBelowThreshold(
            f"{worst} agrees with the unquantized model on {low[worst]:.0%} of next tokens, below --min-top1 {plan.min_top1:g} "
            f"({', '.join(f'{q} {v:.0%}' for q, v in low.items())}): use a larger type such as q5_K_M, q6_K or q8_0 "
            f"(the figures are in {plan.output / 'build.json'})")


def check_disk(plan: BuildPlan, ckpt: checkpoint.Checkpoint) -> None:
    """Refuse before writing anything when the outputs still to make cannot fit."""
    need = sum(quants.size_bytes(ckpt.n_params, a.quant) for a in plan.artifacts if not (plan.output / a.gguf).is_file())
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
                        f"{decimal(free)} is free: free some space or pass --dir on a larger disk")


def _stat_key(directory: Path, names: list[str]) -> list:
    return [(n, (directory / n).stat().st_size, (directory / n).stat().st_mtime_ns) for n in names]


class _Stopped(Exception):
    pass


def _refuse_corrupt(fetched) -> None:
    for name, expected in fetched.expected_sha256.items():
        path = fetched.model_dir / name
        if path.is_file() and sha256_file(path) != expected:
            raise _corrupt(path)


def _corrupt(path: Path) -> OrchError:
    fetch.discard(path)
    return OrchError(f"{path.name} as downloaded does not match the sha256 the hub publishes for it (a corrupt download); "
                     "the bad copy was removed: run the same command again to download it afresh")


def _identity(path: Path) -> dict:
    """The file as it stands now (mtime and inode): registration trusts the recorded sha256 only while these hold."""
    try:
        st = path.stat()
    except OSError:
        return {}
    return {"mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def _file_record(path: Path, hash: bool = True) -> dict:
    return {"size": path.stat().st_size} | ({"sha256": sha256_file(path)} if hash else {})


def _refuse_foreign(output: Path) -> None:
    """A build writes (and --force deletes) inside its directory: never in one that holds files orch did not put there."""
    if not output.is_dir() or not any(output.iterdir()):
        return
    try:
        ours = "orch_version" in json.loads((output / "build.json").read_text())
    except (OSError, ValueError, TypeError):
        ours = False
    if not (ours or (output / ".orch").is_dir()):
        raise OrchError(f"{output} holds files that orch build did not write: pass --dir with a new or empty directory")


def _check_writable(output: Path) -> None:
    probe = nearest_existing(output)
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise OrchError(f"cannot write to {output} ({probe} is not a writable directory): pass --dir with a directory you can write to")
