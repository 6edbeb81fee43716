"""A restore or a build as orch runs them (the same library calls), whose reporter stops at one named step.

    python tests/paused_child.py STEP RESUME_FILE restore STACK ARCHIVE
    python tests/paused_child.py STEP RESUME_FILE build MODEL_DIR OUT QUANTS

It prints "paused after STEP" on stderr and waits there until RESUME_FILE exists, so that a test can kill it (kill -9)
or press Ctrl-C (SIGINT) at exactly that step. The hook is the test's: orch itself never pauses.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from orchestrator.events import Reporter


class PausingAt(Reporter):
    def __init__(self, step: str, resume: Path):
        self.step, self.resume = step, resume

    def reached(self, step: str) -> None:
        if step == self.step:
            print(f"paused after {step}", file=sys.stderr, flush=True)
            while not self.resume.exists():
                time.sleep(0.05)


def restore(reporter: Reporter, stack: str, archive: str) -> None:
    from orchestrator.stack import lifecycle

    lifecycle.restore(Path(stack), Path(archive), reporter)


def build(reporter: Reporter, model_dir: str, out: str, quants: str) -> None:
    """What `orch build MODEL_DIR --quant QUANTS --no-register --dir OUT` runs."""
    from orchestrator.builder import catalog, pipeline
    from orchestrator.builder.plan import make_plan

    pipeline.run_build(make_plan(catalog.resolve(model_dir), quant=quants, output=Path(out)), reporter)


if __name__ == "__main__":
    step, resume, job, *args = sys.argv[1:]
    try:
        {"restore": restore, "build": build}[job](PausingAt(step, Path(resume)), *args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
