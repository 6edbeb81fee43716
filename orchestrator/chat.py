"""`orch chat`: a streaming terminal chat against Ollama's /api/chat, for whoever just built a model."""

from __future__ import annotations

import sys

from orchestrator.errors import OrchError

HELP = "Type a message and press Enter. /clear forgets the conversation, /bye (or Ctrl-D) leaves."


def chat(model: str, host: str, *, system: str | None = None, read=input, write=None) -> None:
    """Talk to `model` until the user leaves; each reply is printed as it streams."""
    import httpx
    import ollama

    write = write or (lambda text: (sys.stdout.write(text), sys.stdout.flush()))
    client = ollama.Client(host=host, timeout=httpx.Timeout(300.0, connect=5.0))
    try:
        client.show(model)
    except ollama.ResponseError as e:
        if e.status_code == 404:
            raise OrchError(f"{model} is not on the server at {host}: orch build it, or orch register a build") from None
        raise OrchError(f"the server at {host} refused {model}: {e.error}") from None
    except (ConnectionError, httpx.HTTPError):
        raise OrchError(f"no Ollama answered at {host}: start it (ollama serve, or orch up), or pass --host") from None
    write(f"Chatting with {model} at {host}. {HELP}\n")
    history: list[dict] = [{"role": "system", "content": system}] if system else []
    while True:
        try:
            text = read(">>> ").strip()
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
        history.append({"role": "user", "content": text})
        reply = ""
        try:
            for part in client.chat(model=model, messages=history, stream=True):
                piece = part.message.content or ""
                reply += piece
                write(piece)
        except KeyboardInterrupt:
            write("\n(interrupted)\n")
        except ollama.ResponseError as e:
            write(f"\nerror from the server: {e.error}\n")
        except (ConnectionError, httpx.HTTPError) as e:
            write(f"\nlost the server at {host} ({type(e).__name__}); your message was kept, send it again when it is back\n")
            history.pop()
            continue
        write("\n")
        history.append({"role": "assistant", "content": reply})
