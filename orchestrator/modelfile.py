"""The Modelfile format: written by `orch build` from the templates in modelfiles/, read back by `orch register`.

Shared by the build and ollama packages and dependent on neither: a build
writes Modelfiles without ever talking to a server, and registration sends
exactly what a Modelfile on disk says.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator import __version__, paths
from orchestrator.errors import BadInput, OrchError

NUM_CTX = 4096


def templates_dir() -> Path:
    return paths.resource_dir("modelfiles")


@dataclass(frozen=True)
class ModelfileSpec:
    gguf: str
    modelfile_name: str
    ollama_name: str
    title: str
    source: str
    markers: tuple[str, str] | None  # the user and assistant marker pieces of a chat model
    parameters: dict
    system: str | None
    license: str


def render(spec: ModelfileSpec) -> str:
    kind = "chat" if spec.markers else "base"
    text = (templates_dir() / f"baichuan2-{kind}.Modelfile.in").read_text(encoding="utf-8")
    params = dict(spec.parameters)
    params["num_ctx"] = NUM_CTX
    values = {
        "TITLE": spec.title,
        "ORCH_VERSION": __version__,
        "SOURCE": spec.source,
        "OLLAMA_NAME": spec.ollama_name,
        "MODELFILE_NAME": spec.modelfile_name,
        "GGUF": spec.gguf,
        "SYSTEM": f'SYSTEM """{_triple_quotable(spec.system, "--system")}"""' if spec.system else "",
        "PARAMETERS": "\n".join(f"PARAMETER {k} {_format(v)}" for k, v in params.items()),
        "LICENSE": one_block(spec.license),
    }
    if spec.markers:
        values |= {"USER_PIECE": spec.markers[0], "ASSISTANT_PIECE": spec.markers[1]}
    single_line = {k: v for k, v in values.items() if k not in ("SYSTEM", "LICENSE", "PARAMETERS")}
    single_line |= {f"PARAMETER {k}": _format(v) for k, v in params.items()}
    for key, value in single_line.items():  # a newline would start a command of the value's choosing (FROM, SYSTEM, ...)
        if "\n" in value or "\r" in value:
            raise BadInput(f"the Modelfile's {key.lower().replace('_', ' ')} {value[:40]!r}… holds a line break, which would "
                           "add a Modelfile command of its own: remove it")
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def license_text(model_dir: Path, license_files: tuple[str, ...]) -> str:
    parts = [(templates_dir() / "baichuan2-license.txt").read_text(encoding="utf-8").strip()]
    for name in license_files:
        parts.append((Path(model_dir) / name).read_text(encoding="utf-8", errors="replace").strip())
    return "\n\n".join(parts)


def one_block(text: str) -> str:
    """Free text from a checkpoint (its LICENSE) as the inside of one triple-quoted value, whatever it holds. Ollama's
    parser closes such a value at the first line end where the value so far ends in three quotes (five quotes in a
    LICENSE did that, and its next line became a command): so no run of quotes is left longer than one."""
    return re.sub(r'"{2,}', '"', text)


def validate_system(system: str | None) -> None:
    if system is not None:
        _triple_quotable(system, "--system")


def _triple_quotable(text: str, what: str) -> str:
    if '"""' in text:
        raise BadInput(f'{what} contains """, which a Modelfile cannot quote: remove it')
    return text


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# --- reading a Modelfile back, as Ollama's parser reads it ---------------------------------------------

INT_PARAMETERS = {"num_ctx", "num_predict", "top_k", "repeat_last_n", "seed", "num_keep", "num_batch", "num_gpu", "num_thread"}
FLOAT_PARAMETERS = {"temperature", "top_p", "min_p", "typical_p", "repeat_penalty", "presence_penalty", "frequency_penalty"}
LIST_PARAMETERS = {"stop"}
BOOL_PARAMETERS = {"use_mmap", "numa"}
COMMANDS = {"from", "template", "system", "parameter", "license", "message", "adapter", "requires"}
ROLES = {"system", "user", "assistant", "tool"}


@dataclass
class Modelfile:
    """What a Modelfile says: the single source of truth for what gets registered."""

    path: Path
    from_: str
    template: str | None = None
    system: str | None = None
    parameters: dict = field(default_factory=dict)
    license: list[str] = field(default_factory=list)
    messages: list[dict] = field(default_factory=list)

    @property
    def gguf(self) -> Path | None:
        """The weights file FROM names (relative to the Modelfile), or None when FROM names a model."""
        if self.from_.startswith(("./", "../", "/", "~")) or self.from_.endswith(".gguf"):
            return (self.path.parent / Path(self.from_).expanduser()).resolve()
        return None


def parse(path: Path) -> Modelfile:
    """Read a Modelfile: `#` comments, commands in any case, values bare, "quoted" or \"\"\"multi-line\"\"\".

    Hand-written: Ollama's own parser is Go and no Python package reads the format.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise OrchError(f"cannot read {path} ({e.__class__.__name__}): pass a Modelfile orch build wrote") from None
    result: dict = {"from_": None, "template": None, "system": None, "parameters": {}, "license": [], "messages": []}
    pos = 0
    where = [1]  # the line of the command being read

    def fail(why: str):
        raise OrchError(f"{path}:{where[0]}: {why}: fix the Modelfile (or rebuild it with orch build)")

    while pos < len(text):
        end = text.find("\n", pos)
        end = len(text) if end < 0 else end
        stripped = text[pos:end].strip()
        where[0] = text.count("\n", 0, pos) + 1
        if not stripped or stripped.startswith("#"):
            pos = end + 1
            continue
        head = re.match(r"[ \t]*(\S+)[ \t]*", text[pos:end])
        command, start, key = head.group(1).lower(), pos + head.end(), None
        if command not in COMMANDS:
            fail(f"unknown command {command.upper()}")
        if command in ("parameter", "message"):
            arg = re.match(r"(\S+)[ \t]*", text[start:end])
            if arg is None:
                fail(f"{command.upper()} needs a name and a value")
            key, start = arg.group(1), start + arg.end()
        value, pos = _value(text, start, fail)
        if command == "from":
            if result["from_"] is not None:
                fail("a second FROM: a Modelfile names one model, and Ollama would take the last one")
            result["from_"] = value
        elif command in ("template", "system"):
            result[command] = value
        elif command == "license":
            result["license"].append(value)
        elif command == "parameter":
            _set_parameter(result["parameters"], key.lower(), value, fail)
        elif command == "message":
            if key.lower() not in ROLES:
                fail(f"MESSAGE role {key!r} is not one of {', '.join(sorted(ROLES))}")
            result["messages"].append({"role": key.lower(), "content": value})
        else:
            fail(f"{command.upper()} is not supported by orch register")
    if not result["from_"]:
        raise OrchError(f"{path} has no FROM line: it must name the GGUF (FROM ./model.gguf)")
    return Modelfile(path=path, **result)


def _value(text: str, start: int, fail) -> tuple[str, int]:
    """The value starting at `start` and the position after its line."""
    if text.startswith('"""', start):  # as Ollama reads it: closed at the first line end where the value ends in three quotes
        for m in re.finditer(r"[\r\n]|\Z", text[start:]):
            so_far = text[start:start + m.start()].strip()
            if len(so_far) >= 6 and so_far.endswith('"""'):
                return so_far[3:-3], start + m.start() + 1
        fail('a """ value is never closed')
    elif text.startswith('"', start):
        out, i = [], start + 1
        while i < len(text) and text[i] != '"':
            if text[i] == "\n":
                fail("a quoted value runs past the end of its line")
            if text[i] == "\\" and i + 1 < len(text):
                i += 1
            out.append(text[i])
            i += 1
        if i >= len(text):
            fail("a quoted value is never closed")
        value, after = "".join(out), i + 1
    else:
        end = text.find("\n", start)
        end = len(text) if end < 0 else end
        return text[start:end].strip(), end + 1
    end = text.find("\n", after)
    end = len(text) if end < 0 else end
    if text[after:end].strip():
        fail(f"unexpected text after a quoted value: {text[after:end].strip()[:40]!r}")
    return value, end + 1


def parse_shown_parameters(text: str) -> dict:
    """The `parameters` text of Ollama's /api/show (`name   value` a line, strings Go-quoted) as typed values, as parse() types them."""
    import ast
    import json

    params: dict = {}

    def fail(problem: str) -> None:
        raise ValueError(problem)

    for line in (text or "").splitlines():
        name, _, raw = line.strip().partition(" ")
        raw = raw.strip()
        if not name:
            continue
        if raw.startswith('"'):
            try:
                raw = json.loads(raw)
            except ValueError:
                raw = ast.literal_eval(raw)
        try:
            _set_parameter(params, name.lower(), str(raw), fail)
        except ValueError:
            params[name.lower()] = raw  # a parameter this orch does not know: kept as text, so it shows in a difference
    return params


def _set_parameter(params: dict, name: str, raw: str, fail) -> None:
    try:
        if name in LIST_PARAMETERS:
            params.setdefault(name, []).append(raw)
        elif name in INT_PARAMETERS:
            params[name] = int(raw)
        elif name in FLOAT_PARAMETERS:
            params[name] = float(raw)
        elif name in BOOL_PARAMETERS:
            params[name] = {"true": True, "false": False}[raw.lower()]
        else:
            fail(f"unknown PARAMETER {name}")
    except (ValueError, KeyError):
        fail(f"PARAMETER {name} {raw!r} is not a valid value")
