"""The README's commands are the CLI's: each is parsed by orch's own parser, and those that need no server run.

A README example that names an option orch no longer has, or a value it
refuses, fails here instead of in a newcomer's first hour.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer.main

from orchestrator.cli import app
from support import cli

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands() -> list[tuple[list[str], bool]]:
    """Every `orch …` command in the README, and whether it is a whole example (a shell block's line, split at && ; |)
    or a mention in the prose (inline code, which may leave out a value it does not discuss)."""
    text = README.read_text()
    found = []
    for block in re.findall(r"```(?:sh|bash|console)\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            found += [(part, True) for part in re.split(r"&&|;|\|", line.split("  #")[0])]
    found += [(m, False) for m in re.findall(r"`(orch [^`]+)`", re.sub(r"```.*?```", "", text, flags=re.S))]
    commands = []
    for part, whole in found:
        if not re.match(r"\s*(?:[A-Z_]+=\S+\s+)*(?:\S*/)?orch\s", part):
            continue
        part = re.sub(r"\$\([^)]*\)", "X", part).replace("…", "").strip()  # $(date +%F) and elisions stand for a value
        words = shlex.split(part, comments=True)
        while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):  # OLLAMA_HOST=... orch ...
            words.pop(0)
        if words and Path(words[0]).name == "orch" and len(words) > 1:
            commands.append((words[1:], whole))
    return commands


FOUND = readme_commands()
COMMANDS = [words for words, whole in FOUND if whole]


def is_group(command) -> bool:
    return hasattr(command, "list_commands")  # Typer carries its own click: no isinstance against the public one


def parse(args: list[str], *, whole: bool = True):
    """orch's own parser over these words, down to the command they name, which is not run. A usage error raises.

    A mention is parsed leniently (a missing value is fine) but must name a real command and real options.
    """
    from orchestrator.cli import with_optional_values

    command, words, ctx, name = typer.main.get_command(app), with_optional_values(list(args)), None, "orch"
    while is_group(command):
        ctx = command.make_context(name, [], parent=ctx, resilient_parsing=True)
        if not words and not whole:
            return ctx  # prose may name a group: `orch k8s`
        assert words, f"orch {' '.join(args)} names a group, not a command"
        name, command = words[0], command.get_command(ctx, words[0])
        assert command is not None, f"orch has no command {words[0]!r}"
        words = words[1:]
    ctx = command.make_context(name, words, parent=ctx, resilient_parsing=not whole)
    known = {opt for p in ctx.command.params for opt in (*p.opts, *p.secondary_opts)}
    unknown = [w for w in args if w.startswith("-") and w.split("=")[0] not in known | {"--help", "-h"}]
    assert not unknown, f"orch {' '.join(args)}: {ctx.command.name} has no option {unknown[0]}"
    return ctx


def test_the_readme_shows_every_command():
    shown = {c[0] for c in COMMANDS}
    group = typer.main.get_command(app)
    assert set(group.list_commands(None)) <= shown, "every command has an example in a shell block"
    assert len(COMMANDS) > 30


@pytest.mark.parametrize(("args", "whole"), FOUND, ids=[("" if w else "mention: ") + " ".join(c)[:60] for c, w in FOUND])
def test_each_readme_command_parses(args, whole):
    try:
        parse(args, whole=whole)
    except Exception as e:  # click's UsageError and its kinds: no such command, no such option, a bad or missing value
        pytest.fail(f"orch {' '.join(args)}: {getattr(e, 'format_message', e.__str__)()}")


@pytest.mark.parametrize("args, says", [
    (["build", "--dir"], "Option '--dir' requires an argument"),
    (["k8s", "render", "b", "--out-dir", "x"], "No such option: --out-dir"),
    (["api-key-nope"], "orch has no command 'api-key-nope'"),
    (["k8s"], "names a group, not a command"),
])
def test_the_check_catches_a_command_that_drifted(args, says):
    with pytest.raises(Exception) as caught:  # noqa: PT011  Click's UsageError (Typer carries its own, privately) or ours
        parse(args)
    usage = any(kind.__name__ == "UsageError" for kind in type(caught.value).__mro__)
    assert usage or isinstance(caught.value, AssertionError), repr(caught.value)
    assert says in (caught.value.format_message() if usage else str(caught.value))


@pytest.mark.parametrize("args", [["models"], ["up", "--dry-run"]])
def test_the_readme_commands_that_need_no_server_run(args, tmp_path):
    assert args in COMMANDS, "run as the README shows it"
    proc = cli(*args, *(["--dir", str(tmp_path / "stack")] if args[0] == "up" else []), check=False)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "stack").exists(), "a dry run writes nothing"
