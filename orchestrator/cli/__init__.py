"""The `orch` command line: a thin layer over the library, one module per command group.

Heavy modules (torch, llama_cpp, transformers, huggingface_hub, httpx) are
imported only inside the commands that need them, so `orch --help` is
instant. Every command's OrchError becomes one `error:` line on stderr and
its exit code, in one place (OrchTyper).
"""

from __future__ import annotations

import functools

import typer
from typer.core import TyperCommand, TyperGroup

from orchestrator.errors import OrchError

# options that may stand alone (their value then is the one here) or take a value: `--imatrix` or `--imatrix FILE`
OPTIONAL_VALUES = {"--imatrix": "compute"}


def with_optional_values(args: list[str]) -> list[str]:
    """The words with each standing-alone option of OPTIONAL_VALUES given its value, as Click can then parse them."""
    out = []
    for i, arg in enumerate(args):
        out.append(arg)
        if arg in OPTIONAL_VALUES and (i + 1 == len(args) or args[i + 1].startswith("-")):
            out.append(OPTIONAL_VALUES[arg])
    return out


class OrchGroup(TyperGroup):
    def parse_args(self, ctx, args: list[str]) -> list[str]:
        return super().parse_args(ctx, with_optional_values(args))


class OrchCommand(TyperCommand):
    """A command whose usage line leaves out the hidden arguments older spellings still take."""

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if not getattr(param, "hidden", False):
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces


class OrchTyper(typer.Typer):
    """A Typer whose commands turn OrchError into one line and an exit code, and Ctrl-C into a quiet exit 130."""

    def __init__(self, **kw):
        super().__init__(**{"no_args_is_help": True, "add_completion": False, "pretty_exceptions_enable": False, "cls": OrchGroup,
                            "rich_markup_mode": None, "context_settings": {"help_option_names": ["-h", "--help"]}} | kw)

    def command(self, *args, **kwargs):
        register = super().command(*args, **{"cls": OrchCommand} | kwargs)

        def decorator(fn):
            @functools.wraps(fn)
            def mapped(*a, **kw):
                try:
                    return fn(*a, **kw)
                except OrchError as e:
                    from orchestrator.cli import render

                    render.error(str(e))
                    raise typer.Exit(e.exit_code) from None
                except KeyboardInterrupt:
                    raise typer.Exit(130) from None

            register(mapped)
            return fn

        return decorator


app = OrchTyper(
    help="Run Baichuan2 privately: weights in, a verified quantized GGUF and an Ollama model out, a browser chat and a monitor.\n\n"
    "Examples:\n\n"
    "  orch models\n\n"
    "  orch build tiny\n\n"
    "  orch build baichuan2-7b-chat --quant q4_K_M,q8_0\n\n"
    "  orch up\n\n"
    "  orch health --watch",
)


def renamed(new_value, old_value, *, new: str, old: str):
    """The value of an option that now has one spelling across commands; the old one still works, with a note."""
    if old_value is None:
        return new_value
    if new_value is not None:
        from orchestrator.errors import BadInput

        raise BadInput(f"{old} and {new} name the same thing: pass only {new}")
    from orchestrator.cli import render

    render.console(stderr=True).print(f"[yellow]note:[/] {old} is now spelled {new} (write {new} from now on; {old} still works)",
                                      soft_wrap=True)
    return old_value


def _print_version(value: bool) -> None:
    if value:
        from orchestrator import __version__

        typer.echo(f"orch {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", "-V", is_eager=True, callback=_print_version,
                                       help="Print orch's version and exit.")) -> None:
    """Run Baichuan2 privately."""


from orchestrator.cli import build, bundle, images, k8s, ollama, stack  # noqa: E402,F401  (each registers its commands on app)


def main() -> None:
    app()

