"""orch register, orch chat, orch health."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from orchestrator.cli import app, render
from orchestrator.cli.build import HOST_HELP


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
    from orchestrator.ollama import register

    todo = register.jobs(target, name)
    with render.RichReporter(quiet=as_json) as reporter:
        results = [register.register(mf, model, host, reporter=reporter, confirm=not no_check) for mf, model in todo]
    if as_json:
        render.print_json([r.as_dict() for r in results])
    else:
        con = render.console()
        for r in results:
            render.registration(con, r.as_dict())
    if any(r.status != "registered" for r in results):
        raise typer.Exit(1)


@app.command("chat")
def chat_cmd(
    model: str = typer.Argument(..., help="An Ollama model name, e.g. tiny:q4_K_M."),
    host: Optional[str] = typer.Option(None, "--host", help=HOST_HELP),
    system: Optional[str] = typer.Option(None, "--system", help="A system prompt for this conversation."),
) -> None:
    """Chat with a model in the terminal, the reply streaming as it is generated.

    Example: orch chat tiny:q4_K_M
    """
    from orchestrator.ollama.chat import chat

    chat(model, host, system=system)


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
    from orchestrator import names
    from orchestrator.errors import OrchError
    from orchestrator.ollama import probe

    if metrics_port is not None and not watch:
        raise typer.BadParameter("--metrics-port needs --watch", param_hint="--metrics-port")
    if model is not None:
        try:
            names.validate(model)
        except OrchError as e:
            raise typer.BadParameter(str(e), param_hint="--model") from None
    spec = probe.Probe(host, model=model, webui=webui, openai=openai, timeout=timeout, slow=slow)
    if not watch:
        report = probe.probe(spec)
        if as_json:
            render.print_json(report.as_dict())
        else:
            render.health_table(report)
        raise typer.Exit(1 if report.failed else 0)
    _watch(spec, as_json=as_json, interval=interval, failures=failures, metrics_port=metrics_port, metrics_bind=metrics_bind)


def _watch(spec, *, as_json: bool, interval: float, failures: int, metrics_port: int | None, metrics_bind: str) -> None:
    from orchestrator.errors import OrchError
    from orchestrator.ollama import watch

    metrics = None
    if metrics_port is not None:
        try:
            metrics = watch.Metrics(metrics_port, metrics_bind)
        except OSError as e:
            raise OrchError(f"cannot serve metrics on {metrics_bind}:{metrics_port} ({e.strerror}): pick another --metrics-port") from None
        render.console(stderr=True).print(f"metrics on http://{metrics_bind}:{metrics_port}/metrics")
    con = render.console()

    def on_event(event) -> None:
        if as_json:
            print(json.dumps(event.as_dict(), ensure_ascii=False), flush=True)
        else:
            con.print(f"[bold]{render.clock(event.time)} {render.escape(event.message)}[/]")

    def on_report(report, watcher) -> None:
        if metrics is not None:
            metrics.update(report, watcher.availability())
        if as_json:
            print(json.dumps(report.as_dict() | {"availability": round(watcher.availability(), 3)}, ensure_ascii=False), flush=True)
        else:
            con.print(render.health_line(report) + f"  [dim]{watcher.availability():.0%} ok over the last {len(watcher.history)}[/]")

    try:
        watch.run(spec, interval=interval, failures=failures, on_report=on_report, on_event=on_event)
    except KeyboardInterrupt:
        pass
    finally:
        if metrics is not None:
            metrics.close()
