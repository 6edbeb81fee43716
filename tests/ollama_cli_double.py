"""A double of `ollama serve` for the one fault the real server cannot be made to show: a restart held back.

    serve   run tests/ollama_double.py on $OLLAMA_HOST (store and template renderer from $OLLAMA_DOUBLE_STORE and
            $OLLAMA_DOUBLE_RENDER); while the file $OLLAMA_DOUBLE_HOLD exists it waits first (at most 60 s): a server
            slow to come back, so that a test can watch the outage before it ends.

Tests put it on PATH as `ollama`; every other test runs the real Ollama's CLI. It imports nothing of orch's.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    if argv[:1] != ["serve"]:
        print(f"Error: this double answers only `serve` (got {' '.join(argv)!r})", file=sys.stderr)
        return 2
    hold, deadline = os.environ.get("OLLAMA_DOUBLE_HOLD"), time.monotonic() + 60
    while hold and Path(hold).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    hostport = (os.environ.get("OLLAMA_HOST") or "127.0.0.1:11434").split("://")[-1]
    bind, _, port = hostport.rpartition(":")
    os.execv(sys.executable, [sys.executable, str(HERE / "ollama_double.py"), "--store", os.environ["OLLAMA_DOUBLE_STORE"],
                              "--render", os.environ["OLLAMA_DOUBLE_RENDER"], "--bind", bind or "127.0.0.1", "--port", port])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
