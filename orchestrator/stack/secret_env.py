"""Start a program with named secrets from a stack's .env (0600) added to its environment, and hand it nothing else.

    python -m orchestrator.stack.secret_env ENV_FILE KEY [KEY ...] -- PROGRAM [ARGS ...]

supervisord runs Open WebUI through this, so the admin password and session
key are in no config file, in supervisord's environment, nor in Ollama's.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from orchestrator import settings
from orchestrator.stack.config import read_env


def main(argv: list[str]) -> int:
    if "--" not in argv or argv.index("--") < 1 or argv.index("--") == len(argv) - 1:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    split = argv.index("--")
    env_file, keys, command = Path(argv[0]), argv[1:split], argv[split + 1:]
    values = read_env(env_file)
    missing = [k for k in keys if k not in values]
    if missing:
        print(f"{env_file} lacks {', '.join(missing)}: run orch up again to generate them", file=sys.stderr)
        return 1
    os.execvpe(command[0], command, settings.child_env(**{k: values[k] for k in keys}))
    return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
