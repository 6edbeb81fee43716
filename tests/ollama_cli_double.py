"""A double of the `ollama` command line for tests. It is not Ollama, and nothing it says is reported as Ollama's.

It answers the subcommands orch's scripts and probes use, against the server
$OLLAMA_HOST names (as the real CLI does):
  serve               run tests/ollama_double.py there (store and template renderer from $OLLAMA_DOUBLE_STORE and
                      $OLLAMA_DOUBLE_RENDER); while the file $OLLAMA_DOUBLE_HOLD exists it waits first (at most
                      60 s): a server slow to come back, so a test can watch the outage before it ends
  list                the server's models; exit 1 when it does not answer
  show NAME           exit 0 when the server has NAME, 1 ("Error: model 'NAME' not found") when not
  create NAME -f F    the Modelfile F registered under NAME (its GGUF uploaded, then /api/create)
  run NAME ""         load NAME (the preload the pods do)
Tests put it on PATH as `ollama`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def host() -> str:
    from orchestrator.ollama.client import resolve_host

    return resolve_host(os.environ.get("OLLAMA_HOST"))


def main(argv: list[str]) -> int:
    import httpx

    if not argv:
        print("usage: ollama serve|list|show|create|run", file=sys.stderr)
        return 2
    command, args = argv[0], argv[1:]
    if command == "serve":
        import time

        hold, deadline = os.environ.get("OLLAMA_DOUBLE_HOLD"), time.monotonic() + 60
        while hold and Path(hold).exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        hostport = (os.environ.get("OLLAMA_HOST") or "127.0.0.1:11434").split("://")[-1]
        bind, _, port = hostport.rpartition(":")
        os.execv(sys.executable, [sys.executable, str(HERE / "ollama_double.py"), "--store", os.environ["OLLAMA_DOUBLE_STORE"],
                                  "--render", os.environ["OLLAMA_DOUBLE_RENDER"], "--bind", bind or "127.0.0.1", "--port", port])
    try:
        if command == "list":
            models = httpx.get(f"{host()}/api/tags", timeout=5).json()["models"]
            print("NAME\n" + "".join(m["name"] + "\n" for m in models), end="")
            return 0
        if command == "show":
            r = httpx.post(f"{host()}/api/show", json={"model": args[0]}, timeout=10)
            if r.status_code != 200:
                print(f"Error: model '{args[0]}' not found", file=sys.stderr)
                return 1
            print(r.json().get("modelfile", ""))
            return 0
        if command == "create":
            name, modelfile = args[0], args[args.index("-f") + 1]
            from orchestrator.ollama.register import register

            reg = register(Path(modelfile), name, host(), confirm=False)
            print(f"{reg.status}: {reg.message}", file=sys.stderr if reg.status != "registered" else sys.stdout)
            return 0 if reg.status == "registered" else 1
        if command == "run":
            r = httpx.post(f"{host()}/api/generate", json={"model": args[0]}, timeout=120)
            return 0 if r.status_code == 200 else 1
    except httpx.HTTPError as e:
        print(f"Error: could not connect to ollama server ({e})", file=sys.stderr)
        return 1
    print(f"Error: unknown command {command!r} (this double answers serve, list, show, create, run)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
