"""A restore as `orch restore` runs it (the same library call), whose reporter stops at one named step.

    python tests/restore_child.py STACK ARCHIVE STEP RESUME_FILE

It prints "paused after STEP" on stderr and waits there until RESUME_FILE exists, so that a test can kill it (kill -9)
or press Ctrl-C (SIGINT) at exactly that step. The hook is the test's: orch itself never pauses.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from orchestrator.events import Reporter
from orchestrator.stack import lifecycle


class PausingAt(Reporter):
    def __init__(self, step: str, resume: Path):
        self.step, self.resume = step, resume

    def reached(self, step: str) -> None:
        if step == self.step:
            print(f"paused after {step}", file=sys.stderr, flush=True)
            while not self.resume.exists():
                time.sleep(0.05)


if __name__ == "__main__":
    stack, archive, step, resume = sys.argv[1:5]
    try:
        lifecycle.restore(Path(stack), Path(archive), PausingAt(step, Path(resume)))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
