"""Every command's help, rendered as a user sees it: defaults visible, no markup leaking, -h and --version there."""

from __future__ import annotations

import re

import pytest
import typer

from orchestrator import __version__
from orchestrator.cli import app
from support import cli


def commands(group, path: tuple[str, ...] = ()):
    yield path, group
    if hasattr(group, "commands"):
        for name, sub in group.commands.items():
            yield from commands(sub, (*path, name))


ALL = list(commands(typer.main.get_command(app)))


@pytest.mark.parametrize("path, command", ALL, ids=[" ".join(p) or "orch" for p, _ in ALL])
def test_help_shows_every_default_and_no_markup(path, command):
    shown = cli(*path, "--help", env={"COLUMNS": "100"}).stdout
    flat = " ".join(shown.split())
    for param in command.params:
        said = " ".join((getattr(param, "help", None) or "").split())
        for default in re.findall(r"\[default: [^\]]*\]", said):
            assert default in flat, f"{' '.join(path)} {param.name}: {default} is not shown"
    assert not re.search(r"\[/?(bold|dim|red|green|yellow|cyan|blue|magenta)\b|\[/\]", shown), "Rich markup leaked"
    assert "<bool>" not in shown, "a flag takes no value"


def test_h_is_help_and_version_says_which_orch():
    assert cli("-h").stdout == cli("--help").stdout
    assert cli("build", "-h").stdout == cli("build", "--help").stdout
    assert cli("--version").stdout.strip() == f"orch {__version__}"


def test_modelscope_without_its_extra_is_one_line_naming_the_install(monkeypatch, tmp_path):
    """The path Chinese users take first: without `pip install 'orch[modelscope]'` it used to end in a 40-line traceback."""
    import sys

    monkeypatch.setitem(sys.modules, "modelscope_hub", None)  # as if the package were not installed
    proc = cli("build", "baichuan2-7b-chat", "--source", "modelscope", "--no-register", "--dir", str(tmp_path / "out"), check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and len(lines) == 1 and "pip install 'orch[modelscope]'" in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_hub_that_does_not_answer_names_the_repo_and_the_endpoint_tried(tmp_path, unused_port):
    """With HF_ENDPOINT already set (to a loopback port nothing listens on), the advice is not to set it."""
    import os

    endpoint = f"http://127.0.0.1:{unused_port}"
    proc = cli("build", "Baichuan2-7B-Chat", "--no-register", "--dir", str(tmp_path / "out"), env=os.environ | {"HF_ENDPOINT": endpoint},
               check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert f"Hugging Face ({endpoint}) failed baichuan-inc/Baichuan2-7B-Chat" in lines[0]
    assert "set HF_ENDPOINT" not in lines[0] and "check that the mirror in HF_ENDPOINT serves it" in lines[0]
