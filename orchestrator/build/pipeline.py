"""`orch build`: run the stages of a BuildPlan, each one resumable and skipped when already done.

fetch -> prepare -> convert (hashing the sources beside it; an adapter merged as the weights stream)
      -> importance matrix (optional) -> quantize -> quality report -> verify -> modelfile -> build.json

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
from orchestrator.build import adapter as adapters
from orchestrator.build import checkpoint, fetch, quality, quants
from orchestrator.build.llamacpp import provision
from orchestrator.build.plan import BuildPlan
from orchestrator.build.state import BuildState, fingerprint
from orchestrator.errors import OrchError
from orchestrator.events import SILENT, Reporter
from orchestrator.files import nearest_existing, sha256_file, write_text

PAUSE_ENV = "ORCH_DEBUG_PAUSE_AFTER"  # stop dead after a stage (the interruption tests kill the process there)
DISK_MARGIN = 64 << 20
GAIN_TYPE = "Q4_K_M"  # with --imatrix, the report also measures this type made without it


class QualityBelowThreshold(OrchError):
    """A quantized type agrees with the unquantized model less often than --min-top1 asks."""


@dataclass
class Run:
    """What this invocation did: stage timings and which stages were already done."""

    timings: dict = field(default_factory=dict)
    resumed: list = field(default_factory=list)


def run_build(plan: BuildPlan, reporter: Reporter = SILENT) -> dict:
    """Build everything the plan names and return the build record (also written to build.json)."""
    return Build(plan, reporter).run()


def write_record(output: Path, record: dict) -> None:
    """build.json: what was built from what, and how (the caller adds the registration once it has one)."""
    write_text(output / "build.json", json.dumps(record, indent=2, ensure_ascii=False) + "\n")


class Build:
    def __init__(self, plan: BuildPlan, reporter: Reporter = SILENT):
        self.plan, self.reporter, self.run_info = plan, reporter, Run()
        self.t0 = time.monotonic()

    # --- the stages in order ------------------------------------------------------------------------------------------
    def run(self) -> dict:
        plan, reporter = self.plan, self.reporter
        _check_writable(plan.output)
        remote = plan.source.kind in ("catalog", "repo")
        # a download can be long: say what it is for before it starts (and only once the repo is known to exist)
        self.fetched = fetch.fetch(plan.source, before_download=lambda: self.announce())
        self.run_info.timings["fetch"] = round(time.monotonic() - self.t0, 3)
        try:
            self.ckpt = checkpoint.read(self.fetched.model_dir, chat_hint=plan.source.entry.chat if plan.source.entry else None)
        except OrchError:
            _refuse_corrupt(self.fetched)  # a file that cannot be read may simply be a corrupt download: say so when it is
            raise
        self.adapter, self.adapter_source = self.read_adapter()
        if plan.system is not None and not self.ckpt.chat:
            reporter.note("--system on a base model only prefixes the prompt", "warning")
        modelfile.validate_system(plan.system)
        if plan.force and plan.output.exists():
            shutil.rmtree(plan.work, ignore_errors=True)
            (plan.output / "build.json").unlink(missing_ok=True)
        self.state = BuildState(plan.work / "state.json")
        self.check_disk()
        if not remote:
            self.announce()
        plan.work.mkdir(parents=True, exist_ok=True)
        _pause_point("fetch")

        self.sources_fp = fingerprint(str(self.fetched.model_dir), _stat_key(self.ckpt.path, self.ckpt.needed_files()),
                                      self.adapter_key())
        self.prepared = plan.work / "prepared"
        self.stage("prepare", self.sources_fp, self.link_prepared)
        _pause_point("prepare")
        if not self.prepared.is_dir():  # recreated if a cleanup removed it; cheap symlinks
            self.link_prepared()

        self.llama = provision.locate(plan.llama_cpp, reporter=reporter)
        ckpt = self.ckpt
        self.control = [ckpt.markers.user_id, ckpt.markers.assistant_id] if ckpt.markers else []
        self.base = plan.base_gguf
        self.convert_fp = fingerprint(self.sources_fp, self.llama.version, plan.base_type, ckpt.normhead, self.control, __version__)
        self.imatrix = self.known_imatrix()  # part of every quantization's fingerprint
        base_rec, hashes = self.convert_beside_hashing()
        _pause_point("convert")
        if plan.imatrix == "compute" and self.imatrix is None:
            tools = self.tools()  # built once, outside the stage's timing
            self.imatrix = self.stage("imatrix", self.imatrix_fp(), lambda: self.compute_imatrix(tools))

        artifacts = {}
        for art in plan.artifacts:
            path = plan.output / art.gguf
            if path == self.base:
                artifacts[art.quant] = base_rec
                continue
            artifacts[art.quant] = self.stage(f"quantize:{art.quant}", self.quantize_fp(art.quant),
                                              lambda art=art, path=path: self.quantize(path, art.quant), outputs=[path])
        _pause_point("quantize")
        self.quality = self.stage("quality", self.quality_fp(), self.evaluate) if self.quantized else {}
        self.baseline.unlink(missing_ok=True)
        if self.base.parent == plan.work and self.base.exists():
            self.base.unlink()  # the intermediate is no longer needed once every quantization is done

        checks = {}
        for art in plan.artifacts:
            path = plan.output / art.gguf
            checks[art.quant] = self.stage(f"verify:{art.quant}", fingerprint(artifacts[art.quant]["sha256"], self.control),
                                           lambda path=path: self.verify(path))
        _pause_point("verify")

        self.write_modelfiles()
        _pause_point("modelfile")
        record = self.record(base_rec, hashes, artifacts, checks)
        write_record(plan.output, record)
        self.check_quality()
        return record

    @property
    def quantized(self) -> list:
        """The artifacts the quality report covers: every quantized type (none with --no-eval)."""
        return [a for a in self.plan.artifacts if a.quant in quants.QUANTIZED] if self.plan.evaluate else []

    def quality_fp(self) -> str:
        """What the report depends on: the types' own fingerprints (which fix their bytes), the budget, the text."""
        return fingerprint(self.convert_fp, [self.quantize_fp(a.quant) for a in self.quantized], self.plan.eval_tokens,
                           sha256_file(quality.CALIBRATION))

    @property
    def baseline(self) -> Path:
        """With an importance matrix, q4_K_M made without one too, for the report to show what the matrix gained."""
        return self.plan.work / f"{self.plan.stem}.{GAIN_TYPE}.no-imatrix.gguf"

    def evaluate(self) -> dict:
        tokens = quality.calibration_tokens(self.ckpt.path / "tokenizer.model", self.plan.eval_tokens,
                                            int(self.ckpt.config.get("bos_token_id", 1)))
        measured = {a.quant: self.plan.output / a.gguf for a in self.quantized}
        if self.imatrix and GAIN_TYPE in measured:
            self.quantize_plain(self.baseline, GAIN_TYPE)
            measured[f"{GAIN_TYPE} without imatrix"] = self.baseline
        figures = quality.evaluate(self.base, measured, tokens, work=self.plan.work, reporter=self.reporter)
        if (without := figures.pop(f"{GAIN_TYPE} without imatrix", None)) is not None:
            figures[GAIN_TYPE]["without_imatrix"] = without
        return {"calibration": quality.describe(tokens) | {"reference": self.plan.base_type}, "types": figures}

    def known_imatrix(self) -> dict | None:
        """The importance matrix: the file given, or the one computed by an earlier run (None until it is computed)."""
        if not self.plan.imatrix:
            return None
        if self.plan.imatrix != "compute":
            path = Path(self.plan.imatrix)
            return {"source": str(path), "path": str(path), "sha256": sha256_file(path)}
        done = self.state.done("imatrix", self.imatrix_fp(), [self.plan.work / "imatrix.gguf"])
        return done["result"] if done else None

    def imatrix_fp(self) -> str:
        return fingerprint(self.convert_fp, sha256_file(quality.IMATRIX_TEXT))

    def compute_imatrix(self, tools) -> dict:
        """llama.cpp's llama-imatrix over orch's imatrix.txt, run on the unquantized GGUF."""
        from orchestrator.build.llamacpp import tools as llama_tools

        target = self.plan.work / "imatrix.gguf"
        n = len(quality.calibration_tokens(self.ckpt.path / "tokenizer.model", 1 << 20, text=quality.IMATRIX_TEXT))
        llama_tools.compute_imatrix(tools, self.base, quality.IMATRIX_TEXT, n, target, log=self.plan.work / "logs" / "imatrix.log",
                                    reporter=self.reporter)
        return {"source": "computed on orch's imatrix.txt", "path": str(target), "sha256": sha256_file(target),
                "size": target.stat().st_size, "tokens": n}

    def tools(self):
        from orchestrator.build.llamacpp import tools

        return tools.locate(self.llama, reporter=self.reporter)

    def check_quality(self) -> None:
        if self.plan.min_top1 is None:
            return
        low = {q: f["top1_agreement"] for q, f in self.quality["types"].items() if f["top1_agreement"] < self.plan.min_top1}
        if low:
            worst = min(low, key=low.get)
            raise QualityBelowThreshold(
                f"{worst} agrees with the unquantized model on {low[worst]:.0%} of next tokens, below --min-top1 {self.plan.min_top1:g} "
                f"({', '.join(f'{q} {v:.0%}' for q, v in low.items())}): use a larger type such as q5_K_M, q6_K or q8_0 "
                f"(the figures are in {self.plan.output / 'build.json'})")

    def announce(self) -> None:
        plan = self.plan
        what = f"{plan.source.name} with the adapter {plan.adapter}" if plan.adapter else plan.source.name
        self.reporter.note(f"Building {what} ({', '.join(plan.quants)}) from {plan.source.describe()}\n  into {plan.output}")

    def read_adapter(self):
        """The LoRA adapter, fetched and checked against the base's tensor shapes before anything is written."""
        if not self.plan.adapter:
            return None, None
        fetched = fetch.fetch_adapter(self.plan.adapter, self.plan.source.hub or "hf", None)
        shapes = checkpoint.tensor_shapes(self.ckpt.path, self.ckpt.weight_format, list(self.ckpt.weight_files))
        adapter = adapters.read(fetched.model_dir, shapes)
        for name in adapter.files():
            expected = fetched.expected_sha256.get(name)
            if expected and sha256_file(adapter.path / name) != expected:
                raise _corrupt(adapter.path / name)
        return adapter, fetched

    def adapter_key(self) -> list | None:
        return _stat_key(self.adapter.path, self.adapter.files()) if self.adapter else None

    def convert_beside_hashing(self) -> tuple[dict, dict]:
        """Convert while the sources are hashed on the other core (for build.json, and against the hub's sha256).

        The GGUF takes its name only once the hashes are proven, so a corrupt
        download leaves nothing behind.
        """
        derived = [a for a in self.plan.artifacts if self.plan.output / a.gguf != self.base]
        # the intermediate is deleted once every type is quantized and measured; it is needed again only if one of those is missing
        base_needed = not all(self.state.done(f"quantize:{a.quant}", self.quantize_fp(a.quant), [self.plan.output / a.gguf])
                              for a in derived)
        base_needed |= bool(self.quantized) and self.state.done("quality", self.quality_fp()) is None
        base_needed |= self.plan.imatrix == "compute" and self.imatrix is None  # the matrix is computed on it
        stop = threading.Event()
        with ThreadPoolExecutor(1, thread_name_prefix="hash") as pool:
            hashing = pool.submit(self.stage, "hash", self.sources_fp, lambda: self.hash_sources(stop))
            try:
                base_rec = self.stage("convert", self.convert_fp, lambda: self.convert(ready=hashing.result),
                                      outputs=[self.base] if base_needed else [])
            except BaseException:
                stop.set()
                if isinstance(hash_error := hashing.exception(), OrchError):
                    raise hash_error from None  # corrupt sources explain whatever the converter made of them
                raise
            return base_rec, hashing.result()

    def quantize_fp(self, quant: str) -> str:
        return fingerprint(self.convert_fp, quant, self.llama.version, *([self.imatrix["sha256"]] if self.imatrix else []))

    # --- the work of each stage ----------------------------------------------------------------------------------------
    def stage(self, key: str, fp: str, work, outputs: list[Path] = ()) -> dict:
        """Run `work` unless a record with this fingerprint exists and its outputs are intact."""
        if (done := self.state.done(key, fp, outputs)) is not None:
            self.run_info.resumed.append(key)
            return done["result"]
        t = time.monotonic()
        result = work()
        seconds = time.monotonic() - t
        self.run_info.timings[key] = round(seconds, 3)
        return self.state.record(key, fp, result, seconds)["result"]

    def link_prepared(self) -> dict:
        """The converter's view of the checkpoint: symlinks to exactly the files it reads, and no code."""
        prepared, names = self.prepared, self.ckpt.needed_files()
        tmp = prepared.with_name(prepared.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name in names:
            (tmp / name).symlink_to((self.ckpt.path / name).resolve())
        shutil.rmtree(prepared, ignore_errors=True)
        os.replace(tmp, prepared)
        return {"files": names}

    def hash_sources(self, stop: threading.Event) -> dict:
        """sha256 of every source file (the adapter's too) for build.json, checked against the hub's where it gives one.

        Runs beside the conversion at the lowest CPU priority, so it takes only what the converter leaves idle.
        """
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)  # this thread only (Linux)
        except (AttributeError, OSError):
            pass
        groups = [(self.ckpt.path, self.ckpt.needed_files(), self.fetched.expected_sha256)]
        if self.adapter:
            groups.append((self.adapter.path, self.adapter.files(), self.adapter_source.expected_sha256))
        total = sum((d / n).stat().st_size for d, names, _ in groups for n in names)
        out: list[dict] = []
        with self.reporter.task("hash source files", total=total) as task:

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

    def convert(self, ready) -> dict:
        from orchestrator.build.llamacpp.convert import convert

        plan, ckpt = self.plan, self.ckpt
        self.base.parent.mkdir(parents=True, exist_ok=True)
        report = convert(self.llama, self.prepared, self.base, plan.base_type, model_name=plan.source.name, normhead=ckpt.normhead,
                         control_ids=self.control, adapter=self.adapter.path if self.adapter else None, generation=ckpt.generation,
                         expected_bytes=quants.size_bytes(ckpt.n_params, plan.base_type),
                         log=plan.work / "logs" / "convert.log", reporter=self.reporter, ready=ready)
        if ckpt.normhead and not report.get("normhead_applied"):
            raise OrchError("the converter never saw lm_head.weight, so NormHead was not applied: the checkpoint lacks an output head")
        if self.adapter and report.get("adapter_merged", 0) != len(self.adapter.pairs):
            raise OrchError(f"the adapter changes {len(self.adapter.pairs)} weights but the converter merged "
                            f"{report.get('adapter_merged', 0)}: report this as an orch bug")
        # an intermediate in .orch is never published, so it is not worth a hash: the convert fingerprint names it
        return _file_record(self.base, hash=self.base.parent != plan.work) | {"report": report}

    def quantize(self, path: Path, quant: str) -> dict:
        if self.imatrix:
            from orchestrator.build.llamacpp import tools

            tools.quantize(self.tools(), self.base, path, quant, Path(self.imatrix["path"]),
                           expected_bytes=quants.size_bytes(self.ckpt.n_params, quant),
                           log=self.plan.work / "logs" / f"quantize-{quant}.log", reporter=self.reporter)
        else:
            self.quantize_plain(path, quant)
        return _file_record(path)

    def quantize_plain(self, path: Path, quant: str) -> None:
        from orchestrator.build.llamacpp.quantize import quantize

        quantize(self.base, path, quant, expected_bytes=quants.size_bytes(self.ckpt.n_params, quant),
                 log=self.plan.work / "logs" / f"quantize-{quant}.log", reporter=self.reporter)

    def verify(self, path: Path) -> dict:
        from orchestrator.build.verify import verify

        ckpt = self.ckpt
        self.reporter.note(f"verifying {path.name}: chat markers, a few generated tokens")
        return verify(path, layers=ckpt.layers, markers=ckpt.markers, tokenizer=ckpt.path / "tokenizer.model",
                      eos_id=int(ckpt.config.get("eos_token_id", 2)))

    def write_modelfiles(self) -> None:
        plan, ckpt = self.plan, self.ckpt
        license_text = modelfile.license_text(ckpt.path, ckpt.license_files)
        for art in plan.artifacts:
            spec = modelfile.ModelfileSpec(
                gguf=art.gguf, modelfile_name=art.modelfile, ollama_name=art.ollama_name,
                title=f"{plan.stem} {art.quant} ({'chat' if ckpt.chat else 'base'}, Baichuan {ckpt.generation})",
                source=plan.source.describe() + (f" with the LoRA adapter {plan.adapter}" if plan.adapter else ""),
                markers=ckpt.markers.pieces if ckpt.markers else None, parameters=ckpt.defaults.as_parameters(),
                system=plan.system, license=license_text)
            write_text(plan.output / art.modelfile, modelfile.render(spec))

    def record(self, base_rec: dict, hashes: dict, artifacts: dict, checks: dict) -> dict:
        plan, fetched, state = self.plan, self.fetched, self.state
        record = {
            "orch_version": __version__,
            "source": {"kind": plan.source.kind, "spec": plan.source.describe(), "repo": plan.source.repo_id,
                       "hub": plan.source.hub, "revision": fetched.revision, "path": str(fetched.model_dir),
                       "files": hashes["files"]},
            "model": self.ckpt.summary(),
            "llama_cpp": self.llama.describe() | {"converter_fixes": base_rec["report"]},
            "artifacts": [
                {"file": a.gguf, "type": a.quant, "size": artifacts[a.quant]["size"], "sha256": artifacts[a.quant]["sha256"],
                 "modelfile": a.modelfile, "ollama_name": a.ollama_name, "verify": checks[a.quant]}
                | ({"quality": self.quality["types"][a.quant]} if a.quant in self.quality.get("types", {}) else {})
                for a in plan.artifacts
            ],
            "timings": {"fetch": self.run_info.timings["fetch"]} | {k: state.stages[k]["seconds"] for k in state.stages}
            | {"total_this_run": round(time.monotonic() - self.t0, 3)},
            "resumed_stages": self.run_info.resumed,
        }
        if self.quality:
            record["quality"] = self.quality["calibration"]
        if self.imatrix:
            record["imatrix"] = {k: v for k, v in self.imatrix.items() if k != "path"}
        if self.adapter:
            record["adapter"] = {"spec": plan.adapter, "path": str(self.adapter.path), "revision": self.adapter_source.revision,
                                 "files": hashes["adapter_files"], "config": self.adapter.summary()}
        return record

    def check_disk(self) -> None:
        """Refuse before writing anything when the outputs still to make cannot fit."""
        plan, ckpt = self.plan, self.ckpt
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
                            f"{decimal(free)} is free: free some space or pass --output on a larger disk")


def _pause_point(stage: str) -> None:
    if os.environ.get(PAUSE_ENV) == stage:
        print(f"orch: paused after {stage}", file=sys.stderr, flush=True)
        while True:
            time.sleep(60)


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


def _file_record(path: Path, hash: bool = True) -> dict:
    return {"size": path.stat().st_size} | ({"sha256": sha256_file(path)} if hash else {})


def _check_writable(output: Path) -> None:
    probe = nearest_existing(output)
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise OrchError(f"cannot write to {output} ({probe} is not a writable directory): pass --output with a directory you can write to")
