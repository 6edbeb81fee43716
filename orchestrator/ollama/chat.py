"""`orch chat`: a streaming terminal chat against Ollama's /api/chat, for whoever just built a model."""

from __future__ import annotations

import sys

from orchestrator import names
from orchestrator.errors import OrchError
from orchestrator.ollama.client import START_IT, Ollama, Refused, TransportError

HELP = "Type a message and press Enter. /clear forgets the conversation, /bye (or Ctrl-D) leaves."


def chat(model: str, host: str | None = None, *, system: str | None = None, read=input, write=None) -> None:
    """Talk to `model` until the user leaves; each reply is printed as it streams."""
    write = write or (lambda text: (sys.stdout.write(text), sys.stdout.flush()))
    with Ollama(host, timeout=300.0) as server:
        _converse(server, model, system, read, write)


def _converse(server: Ollama, model: str, system: str | None, read, write) -> None:
    try:
        shown = server.show(model)
    except Refused as e:
        if e.status_code == 404:
            raise OrchError(names.not_served(model, server.models(), server.url)) from None
        raise OrchError(f"the server at {server.url} refused {model}: {e.error}") from None
    except TransportError:
        raise OrchError(f"no Ollama answered at {server.url}: {START_IT}") from None
    write(f"Chatting with {model} at {server.url}. {HELP}\n")
    info = getattr(shown, "modelinfo", None) or {}
    from orchestrator.builder.catalog import TINY_IS_A_DEMO, is_demo

    if info.get("general.architecture") == "baichuan" and is_demo(info.get("general.parameter_count")):
        write(f"({model} is a tiny Baichuan of {info['general.parameter_count'] / 1e6:.0f}M parameters, {TINY_IS_A_DEMO})\n")
    history: list[dict] = [{"role": "system", "content": system}] if system else []
    unsent = ""  # a message the server never answered, sent again on an empty line
    while True:
        try:
            text = read(">>> ").strip() or unsent
        except (EOFError, KeyboardInterrupt):
            write("\n")
            return
        if text in ("/bye", "/exit", "/quit"):
            return
        if text == "/clear":
            history = history[:1] if system else []
            write("(conversation cleared)\n")
            continue
        if not text:
            continue
        unsent = ""
        history.append({"role": "user", "content": text})
        reply = ""
        try:
            for part in server.chat(model, history, stream=True):
                piece = part.message.content or ""
                reply += piece
                write(piece)
        except KeyboardInterrupt:
            write("\n(interrupted)\n")
        except Refused as e:
            write(f"\nerror from the server: {e.error}\n")
        except TransportError as e:
            history.pop()  # not part of the conversation until the server has answered it
            unsent = text
            write(f"\nlost the server at {server.url} ({type(e).__name__}); your message was not answered: "
                  "press Enter to send it again once the server is back\n")
            continue
        write("\n")
        history.append({"role": "assistant", "content": reply})
