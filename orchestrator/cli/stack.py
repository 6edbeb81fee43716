"""orch up, orch down, orch status, orch logs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from orchestrator.cli import OrchTyper, app, render, renamed
from orchestrator.errors import BadInput, OrchError

STACK_DIR_HELP = "Stack directory for compose.yaml and .env [default: ~/.local/share/orch/stack, or $XDG_DATA_HOME/orch/stack]."


def _stack_dir(directory: Optional[Path]) -> Path:
    from orchestrator import paths

    return (directory or paths.default_stack_dir()).expanduser().resolve()


@app.command()
def up(
    dry_run: bool = typer.Option(False, "--dry-run", help="Render and validate everything, print the plan, start nothing."),
    directory: Optional[Path] = typer.Option(None, "--dir", "-d", help=STACK_DIR_HELP),
    port: Optional[int] = typer.Option(None, "--port", help="Port for the browser chat (Open WebUI) [default: as the stack last "
                                       "ran, else 3000]."),
    bind: Optional[str] = typer.Option(None, "--bind", help="Address Open WebUI is published on (it has sign-in) [default: as the "
                                       "stack last ran, else 0.0.0.0]."),
    ollama_port: Optional[int] = typer.Option(None, "--ollama-port", help="Port Ollama is published on [default: as the stack "
                                              "last ran, else 11434]."),
    expose_ollama: bool = typer.Option(False, "--expose-ollama", help="Publish Ollama beyond 127.0.0.1 (it has no authentication)."),
    ollama_url: Optional[str] = typer.Option(None, "--host", help="The URL of an Ollama that already runs, to use instead of starting one "
                                             "(the same --host as build, chat and health take) [default: as the stack last ran]."),
    old_ollama_url: Optional[str] = typer.Option(None, "--ollama-url", hidden=True),
    gpu: Optional[bool] = typer.Option(None, "--gpu/--no-gpu", help="Reserve NVIDIA GPUs for Ollama [default: detected]."),
    offline: bool = typer.Option(False, "--offline", help="Tell Open WebUI not to download anything (no internet)."),
    model: Optional[str] = typer.Option(None, "--model", help="Default model in the chat, e.g. baichuan2-7b-chat:q4_K_M [default: "
                                        "as the stack last ran]."),
    wait: float = typer.Option(600, "--wait", help="Seconds to wait for the services to become healthy."),
    runtime: Optional[str] = typer.Option(None, "--runtime", help="docker or native [default: the one the stack last ran on, else "
                                          "docker where its daemon answers]."),
    webui: Optional[bool] = typer.Option(None, "--webui/--no-webui", help="--no-webui: Ollama alone, for a headless API box (no "
                                         "browser chat) [default: as the stack last ran, else with Open WebUI]."),
    no_backup: bool = typer.Option(False, "--no-backup", help="No backup before Open WebUI changes (and so no data to roll back to)."),
    api: bool = typer.Option(False, "--api", help="Keyed API access through Open WebUI (Ollama stays on loopback): keys on, "
                             "a first key made and shown once; orch api-key makes more."),
    registry: Optional[str] = typer.Option(None, "--registry", envvar="ORCH_REGISTRY", help="A registry mirror for the docker "
                                           "images, e.g. docker.m.daocloud.io [default: the images orch images build made, "
                                           "when there, else Docker Hub and ghcr.io]."),
    as_json: bool = typer.Option(False, "--json", help="Print the result (URLs, the admin account, registrations, health) as JSON."),
) -> None:
    """Start Ollama and Open WebUI (docker compose, or native processes); chat in the browser at http://localhost:3000.

    The stack remembers how it was started: a bare orch up later (and orch status,
    health, chat and bench) uses the same ports, bind address, runtime and model;
    a flag given again changes the stack, and says so.

    Examples:

      orch up --dry-run

      orch up --model baichuan2-7b-chat:q4_K_M

      orch up --host http://127.0.0.1:11434 --bind 127.0.0.1

      orch up --runtime native --offline

      orch up --runtime native --no-webui          # a headless API box

      orch up --api                                # an API key for scripts and other machines

      orch up --runtime docker --registry docker.m.daocloud.io   # images through a mirror
    """
    from orchestrator.stack import compose, lifecycle, preflight

    ollama_url = renamed(ollama_url, old_ollama_url, new="--host", old="--ollama-url")
    chosen_gpu, gpu_reason = (gpu, "--gpu" if gpu else "--no-gpu") if gpu is not None else preflight.detect_gpu()
    d = _stack_dir(directory)
    plan, changes = lifecycle.planned(d, {"port": port, "bind": bind, "ollama_port": ollama_port, "host": ollama_url, "model": model},
                                      webui=webui, expose_ollama=expose_ollama, gpu=chosen_gpu, offline=offline, backup=not no_backup,
                                      api=api, registry=registry)
    con, err = render.console(), render.console(stderr=True)
    chosen, why, moved = lifecycle.runtime_for(d, runtime)  # a dry run plans with the runtime a real run would take
    changes += moved

    def announce() -> None:
        for change in changes:
            err.print(f"changes the stack: {change}", soft_wrap=True, markup=False)
        for warning in plan.warnings(chosen.name):
            err.print(f"[yellow]warning:[/] {render.escape(warning)}", soft_wrap=True)
        err.print(f"GPU: {gpu_reason}", soft_wrap=True)
        err.print(f"runtime: {chosen.name} ({why})", soft_wrap=True)

    if dry_run:
        if chosen.name == "native":
            _dry_run_native(plan, announce)
        else:
            _dry_run(plan, compose.check(plan), announce)
        return
    try:
        chosen.preflight(plan)  # before any other output: a failure is one line
    except OrchError as e:
        if runtime is not None:
            raise
        raise e.__class__(f"runtime {chosen.name} ({why}): {e}") from None  # orch chose it: say which and why
    announce()
    try:
        with render.RichReporter(quiet=as_json) as reporter:
            result = lifecycle.up(plan, chosen, wait=wait, reporter=reporter)
    except KeyboardInterrupt:
        err.print(f"interrupted: what orch up started keeps running ({chosen.name} runtime, stack {plan.directory}); "
                  f"orch status{_dir_flag(plan.directory)} shows it, orch down{_dir_flag(plan.directory)} stops it, "
                  f"and orch up{_dir_flag(plan.directory)} carries on", soft_wrap=True, markup=False)
        raise typer.Exit(130) from None
    if as_json:
        render.print_json(result.as_dict())
    else:
        _print_up(result, con)
    if result.health.failed:
        err.print("[red]the stack is up but a health check failed[/] (see the table): orch logs, then orch health", soft_wrap=True)
        raise typer.Exit(1)


def _dir_flag(directory: Path) -> str:
    from orchestrator import paths

    return "" if directory == paths.default_stack_dir().expanduser().resolve() else f" --dir {directory}"


def _dry_run(plan, doc: dict, announce) -> None:
    import yaml

    from orchestrator.stack.config import ADMIN_EMAIL

    announce()
    con = render.console()
    con.print(f"[bold]Plan[/] (nothing started): stack directory {plan.directory}")
    for service, image in plan.images.items():
        if service in doc["services"]:
            con.print(f"  {service}: {image}  ports {', '.join(doc['services'][service]['ports'])}")
    if plan.ollama_url:
        con.print(f"  ollama: not started; Open WebUI uses {doc['services']['open-webui']['environment']['OLLAMA_BASE_URL']}")
    con.print("  compose.yaml (validated against the Compose Specification schema):")
    con.print(yaml.safe_dump(doc, sort_keys=False), markup=False, highlight=False)
    con.print(f"  .env (mode 0600): WEBUI_SECRET_KEY, WEBUI_ADMIN_EMAIL={ADMIN_EMAIL}, WEBUI_ADMIN_PASSWORD (generated once)")


def _dry_run_native(plan, announce) -> None:
    """The native plan: the programs supervisord would run, the ollama found, Open WebUI's virtualenv."""
    from orchestrator.builder import ollama_source as install
    from orchestrator.stack import native

    announce()
    con = render.console()
    con.print(f"[bold]Plan[/] (nothing started): supervisord in {plan.directory}, restarting each program on a crash")
    ollama = install.find_ollama()
    if plan.ollama_url is None:
        con.print(f"  ollama binary: {ollama or f'NOT FOUND: install it with: {native.OLLAMA_INSTALL}, or orch install-ollama, or pass --host URL of one that runs'}",
                  soft_wrap=True, markup=False)
    venv = native.webui_venv()
    if plan.webui:
        installed = (venv / "bin" / "open-webui").is_file()
        con.print(f"  Open WebUI virtualenv: {venv} ({'installed' if installed else 'installed by orch up, once: several minutes'})",
                  soft_wrap=True, markup=False)
    for service in native.services(plan, venv / "bin" / "open-webui" if plan.webui else None):
        con.print(f"  program {service.name}: {' '.join(service.command)}", soft_wrap=True, markup=False)
        con.print(f"    environment: {', '.join(f'{k}={v}' for k, v in service.env.items())}", soft_wrap=True, markup=False)
        con.print(f"    healthy when {service.health_url} answers", soft_wrap=True, markup=False)
    con.print("  secrets: .env (mode 0600), handed to Open WebUI alone", markup=False)


def _print_up(result, con) -> None:
    for r in result.registered:
        render.registration(con, r.as_dict())
    render.health_table(result.health)
    for key in result.first_start_only:
        con.print(f"[yellow]note:[/] {key} changed, but Open WebUI reads it only on its first start: "
                  "change it in its admin settings, or orch down --volumes to start afresh", soft_wrap=True)
    urls, admin = result.urls, result.admin
    model = result.health.model or "MODEL"
    if urls["chat"]:
        con.print(f"\n[bold green]Chat:[/] {urls['chat']}   sign in as {admin['email']}", soft_wrap=True)
    if admin.get("password"):
        con.print(f"[bold]Admin password (shown once, kept in {result.env}):[/] {render.escape(admin['password'])}", soft_wrap=True)
    con.print(f"Ollama API: {urls['ollama']}\nOpenAI-compatible base URL: {urls['openai']}\n", soft_wrap=True)
    con.print("from openai import OpenAI\n"
              f"client = OpenAI(base_url=\"{urls['openai']}\", api_key=\"ollama\")\n"
              f"print(client.chat.completions.create(model=\"{model}\", messages=[{{\"role\": \"user\", \"content\": \"你好\"}}]).choices[0].message.content)",
              markup=False, highlight=False, soft_wrap=True)
    if result.api:
        _print_api(con, result.api["url"], model, result.api["key"], result.api["keys_file"])
    for name in result.revoked:
        con.print(f"[yellow]note:[/] key {name} was revoked after the backup this stack was restored from: revoked again",
                  soft_wrap=True)


def _print_api(con, url: str, model: str, key: str | None, keys_file: str) -> None:
    """Where the keyed API answers, from another machine too (replace 127.0.0.1 with this box's name), and the key once."""
    con.print(f"\n[bold green]Keyed API (through Open WebUI):[/] {url}", soft_wrap=True)
    if key:
        con.print(f"[bold]API key (shown once, kept in {keys_file}):[/] {render.escape(key)}", soft_wrap=True)
        con.print(f"export ORCH_API_KEY={key}", markup=False, highlight=False, soft_wrap=True)  # the lines below, pasted, work
    con.print(f"curl {url}/chat/completions -H \"Authorization: Bearer $ORCH_API_KEY\" -H 'Content-Type: application/json' "
              f"-d '{{\"model\": \"{model}\", \"messages\": [{{\"role\": \"user\", \"content\": \"你好\"}}]}}'",
              markup=False, highlight=False, soft_wrap=True)


api_key_app = OrchTyper(help="API keys for scripts and other machines, through Open WebUI (Ollama stays on loopback).\n\n"
                       "Examples:\n\n  orch api-key create ci-bot\n\n  orch api-key list\n\n  orch api-key revoke ci-bot")
app.add_typer(api_key_app, name="api-key")


def _webui_of(d: Path) -> str:
    from orchestrator.stack import choice as runtime

    _, record = runtime.load(d)
    if not record.webui_url:
        raise OrchError(f"no stack with Open WebUI in {d}: run orch up first (keys are Open WebUI's), or pass --dir")
    return record.webui_url


@api_key_app.command("create")
def api_key_create(
    name: str = typer.Argument(..., metavar="NAME", help="The key's name (its service user's): lower-case letters, digits, '-'."),
    directory: Optional[Path] = typer.Option(None, "--dir", "-d", help=STACK_DIR_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the key and its URL as JSON."),
) -> None:
    """Make a key NAME: a service user in Open WebUI that may chat with every model and reach nothing else.

    The key is printed once and kept in the stack directory's api-keys.env (0600).

    Example: orch api-key create ci-bot
    """
    from orchestrator.stack import api_keys

    d = _stack_dir(directory)
    url = _webui_of(d)
    key = api_keys.create(d, url, name)
    if as_json:
        render.print_json({"name": name, "key": key, "url": f"{url}/api", "keys_file": str(d / api_keys.KEYS_FILE)})
        return
    from orchestrator.stack import choice as runtime

    _, record = runtime.load(d)
    _print_api(render.console(), f"{url}/api", record.model or _a_served_model(record.ollama_url), key, str(d / api_keys.KEYS_FILE))


def _a_served_model(ollama_url: str) -> str:
    """A model the stack's Ollama has, for the example lines (MODEL when it has none or does not answer)."""
    from orchestrator.ollama.client import Ollama

    with Ollama(ollama_url, timeout=5.0, connect=2.0) as server:
        return next(iter(server.models()), "MODEL")


@api_key_app.command("list")
def api_key_list(
    directory: Optional[Path] = typer.Option(None, "--dir", "-d", help=STACK_DIR_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the keys' names and users as JSON."),
) -> None:
    """The keys orch made (their service users in Open WebUI); the keys themselves are not shown again.

    Example: orch api-key list --json
    """
    from orchestrator.stack import api_keys

    d = _stack_dir(directory)
    keys = api_keys.listing(d, _webui_of(d))
    if as_json:
        render.print_json(keys)
        return
    con = render.console()
    for k in keys:
        con.print(f"{k['name']}  ({k['email']}{', kept in api-keys.env' if k['stored'] else ''})", markup=False)
    if not keys:
        con.print("no keys: orch api-key create NAME, or orch up --api")


@api_key_app.command("revoke")
def api_key_revoke(
    name: str = typer.Argument(..., metavar="NAME", help="A key's name, as orch api-key list shows it."),
    directory: Optional[Path] = typer.Option(None, "--dir", "-d", help=STACK_DIR_HELP),
) -> None:
    """Revoke key NAME at once: its service user is deleted in Open WebUI, and the key with it.

    Example: orch api-key revoke ci-bot
    """
    from orchestrator.stack import api_keys

    d = _stack_dir(directory)
    api_keys.revoke(d, _webui_of(d), name)
    render.console().print(f"revoked {name}: its key is refused from now on", markup=False)


@app.command()
def down(
    volumes: bool = typer.Option(False, "--volumes", help="Also delete the models and chat history volumes."),
    directory: Optional[Path] = typer.Option(None, "--dir", "-d", help=STACK_DIR_HELP),
) -> None:
    """Stop the stack orch up started (only the processes or containers it started), even one that never came up.

    Example: orch down
    """
    from orchestrator.stack import lifecycle

    d = _stack_dir(directory)
    with render.RichReporter() as reporter:
        rt, _ = lifecycle.opened(d, reporter)
    stopped = rt.down(d, volumes=volumes)
    render.console().print(f"stopped {', '.join(stopped) or 'nothing (no process of the stack was running)'}"
                           + (", removed the data" if volumes else ""))


@app.command()
def status(
    directory: Optional[Path] = typer.Option(None, "--dir", "-d", help=STACK_DIR_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the services and the loaded models as JSON."),
) -> None:
    """Services, their health, where they answer, and the models loaded with their memory.

    Exits 0 when every service runs and Ollama answers, 1 when not (a stopped stack too).

    Example: orch status --json
    """
    from orchestrator.stack import lifecycle

    d = _stack_dir(directory)
    with render.RichReporter(quiet=as_json) as reporter:
        st = lifecycle.status(d, reporter)
    if as_json:
        render.print_json(st.as_dict())
        raise typer.Exit(0 if st.healthy else 1)
    con = render.console()
    con.print(f"runtime {st.runtime}, stack {d}", markup=False)
    if st.record.webui_url:
        con.print(f"chat: {st.record.webui_url}", markup=False)
    con.print(f"ollama: {st.record.ollama_url}", markup=False)
    for s in st.services:
        colour = "green" if s.running else "yellow"
        con.print(f"{s.name}: [{colour}]{s.state}[/]{', ' + render.escape(s.detail) if s.detail else ''}")
    if st.ollama_error:
        con.print(st.ollama_error, markup=False)
    else:
        for m in st.loaded:
            con.print(f"loaded {m['name']}: {m.get('size', 0) / 1e9:.1f} GB, {m.get('size_vram', 0) / 1e9:.1f} GB in GPU memory")
        if not st.loaded:
            con.print(f"no model loaded right now ({st.record.ollama_url})")
    con.print("[green]healthy[/]" if st.healthy else f"[red]not healthy[/]: orch logs{_dir_flag(d)}, or start it with "
              f"orch up{_dir_flag(d)}")
    raise typer.Exit(0 if st.healthy else 1)


@app.command()
def logs(
    service: Optional[str] = typer.Argument(None, metavar="SERVICE", help="ollama or open-webui [default: both]."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines."),
    directory: Optional[Path] = typer.Option(None, "--dir", "-d", help=STACK_DIR_HELP),
) -> None:
    """Show the services' logs.

    Example: orch logs open-webui -f
    """
    from orchestrator.stack import choice as runtime
    from orchestrator.stack.config import known_services

    known_services([service] if service else None)
    d = _stack_dir(directory)
    rt, _ = runtime.load(d)
    for line in rt.logs(d, [service] if service else None, follow=follow):
        print(line, flush=True)


WEBUI_DATA_HELP = ("Open WebUI's data directory mounted on its own (a Kubernetes volume) instead of a stack; "
                   "WEBUI_SECRET_KEY in the environment ties it to its stack.")


@app.command("backup")
def backup_cmd(
    directory: Optional[Path] = typer.Option(None, "--dir", "-d", help=STACK_DIR_HELP),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Archive to write, or a directory for a dated name "
                                       "[default: backups/ in the stack directory]."),
    webui_data: Optional[Path] = typer.Option(None, "--webui-data", help=WEBUI_DATA_HELP),
    keep: Optional[int] = typer.Option(None, "--keep", min=1, help="Keep only this many scheduled backups in --out's "
                                       "directory (the CronJob's); those taken by hand are never deleted."),
) -> None:
    """Back up the stack's chats, users, settings and secrets into one archive (mode 0600), while it runs.

    Open WebUI's database is copied with SQLite's online backup API; the archive's
    manifest lists every file's sha256 and the Ollama models with their digests
    (the GGUFs themselves stay in the build directories).

    Examples:

      orch backup

      orch backup --out /mnt/safe/orch-$(date +%F).tar.gz

      orch backup --webui-data /data --out /backups --keep 7      # what orch k8s render --backup-schedule runs
    """
    from orchestrator.stack import backup

    if webui_data is not None:
        if out is None:
            raise BadInput("--webui-data needs --out: a file, or a directory for a dated name")
        folder = out if out.is_dir() else out.parent
        path = backup.create(None, out.resolve(), data=webui_data.resolve(), reason="scheduled" if keep else "orch backup",
                             label="scheduled" if keep else "manual")
        gone = backup.prune(folder.resolve(), keep, label="scheduled") if keep else []
        render.console().print(f"backed up {webui_data} to {path} ({path.stat().st_size / 1e6:.1f} MB"
                               f"{f', {len(gone)} older scheduled backups deleted' if gone else ''})", markup=False, soft_wrap=True)
        return
    if keep is not None:
        raise BadInput("--keep prunes the scheduled backups of --webui-data; a stack's own are pruned by orch up")

    from orchestrator.stack import lifecycle

    d = _stack_dir(directory)
    with render.RichReporter() as reporter:
        path, models = lifecycle.take_backup(d, out.resolve() if out else None, reporter)
    render.console().print(f"backed up {d} to {path} ({path.stat().st_size / 1e6:.1f} MB, {models} models listed)",
                           markup=False, soft_wrap=True)


@app.command("restore")
def restore_cmd(
    archive: Path = typer.Argument(..., metavar="ARCHIVE", help="A file orch backup wrote."),
    directory: Optional[Path] = typer.Option(None, "--dir", "-d", help=STACK_DIR_HELP),
    webui_data: Optional[Path] = typer.Option(None, "--webui-data", help=WEBUI_DATA_HELP + " Stop Open WebUI first."),
) -> None:
    """Put a backup back: the archive is checked whole first, and a cut, altered or foreign one changes nothing.

    Stop the stack first (orch down); start it again with orch up.

    Example: orch down && orch restore ~/.local/share/orch/stack/backups/orch-backup-20261201-101500-manual.tar.gz && orch up
    """
    from orchestrator.stack import backup, lifecycle

    if webui_data is not None:
        with render.RichReporter() as reporter:
            manifest = backup.restore_data(archive, webui_data.resolve(), reporter)
        render.console().print(f"restored {archive} ({manifest.created}) into {webui_data}: start Open WebUI again",
                               markup=False, soft_wrap=True)
        return
    d = _stack_dir(directory)
    with render.RichReporter() as reporter:
        manifest = lifecycle.restore(d, archive.resolve(), reporter)
    render.console().print(f"restored {archive} ({manifest.created}, {len(manifest.files)} files) into {d}: start it with "
                           f"orch up{_dir_flag(d)}", markup=False, soft_wrap=True)
