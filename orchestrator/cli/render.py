"""Everything the CLI shows: one console, Rich progress bars behind the library's Reporter, tables, errors."""

from __future__ import annotations

import json
import time

from orchestrator.events import Level, Reporter, Task

COLOUR = {"ok": "green", "degraded": "yellow", "fail": "red", "skipped": "dim"}


def console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def error(message: str) -> None:
    console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)


def escape(text: str) -> str:
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def print_json(obj) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False))


class _RichTask(Task):
    def __init__(self, progress, task_id, total):
        self.progress, self.id, self.total = progress, task_id, total

    def advance(self, amount: float) -> None:
        self.progress.advance(self.id, amount)

    def update(self, *, completed=None, total=None, description=None) -> None:
        kw = {k: v for k, v in (("completed", completed), ("total", total), ("description", description)) if v is not None}
        if "total" in kw:
            self.total = kw["total"]
        self.progress.update(self.id, **kw)

    def close(self) -> None:
        if self.total is None:
            self.progress.remove_task(self.id)
        else:
            self.progress.update(self.id, completed=self.total)


def _amount_column():
    """Bytes as a download reads them, other units as done/total, and nothing for a wait that has no total."""
    from rich.progress import DownloadColumn, ProgressColumn
    from rich.text import Text

    class Amount(ProgressColumn):
        downloads = DownloadColumn()

        def render(self, task) -> Text:
            if task.total is None:
                return Text("")
            unit = task.fields.get("unit", "bytes")
            if unit == "bytes":
                return self.downloads.render(task)
            return Text(f"{int(task.completed)}/{int(task.total)} {unit}", style="progress.download")

    return Amount()


class RichReporter(Reporter):
    """Progress bars (none when quiet) and notes on stderr, so stdout stays for results (and --json)."""

    STYLE = {"info": "", "warning": "[yellow]note:[/] "}

    def __init__(self, quiet: bool = False):
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("{task.description:<28}"), BarColumn(), _amount_column(), TimeElapsedColumn(),
                                 TimeRemainingColumn(), console=console(stderr=True), transient=False, disable=quiet)
        self.started = False  # the bars start with the first task: a command with notes alone draws no empty display

    def __enter__(self) -> "RichReporter":
        return self

    def __exit__(self, *exc) -> None:
        if self.started:
            self.progress.__exit__(*exc)

    def task(self, description: str, total: float | None = None, unit: str = "bytes") -> Task:
        if not self.started:
            self.progress.__enter__()
            self.started = True
        return _RichTask(self.progress, self.progress.add_task(description, total=total, unit=unit), total)

    def note(self, text: str, level: Level = "info") -> None:
        self.progress.console.print(self.STYLE.get(level, "") + escape(text), soft_wrap=True)


def registration(con, r: dict) -> None:
    colour = {"registered": "green", "skipped": "yellow", "failed": "red"}[r["status"]]
    con.print(f"[{colour}]{r['status']}[/] {escape(r['name'])}: {escape(r['message'])}", soft_wrap=True)
    con.print(f"  the same by hand: {escape(r['command'])}", soft_wrap=True)


def health_table(report) -> None:
    from rich.table import Table

    table = Table(title=f"orch health  {report.host}" + (f"  model {report.model}" if report.model else ""), title_justify="left")
    for col, just in (("check", "left"), ("status", "left"), ("ms", "right"), ("detail", "left")):
        table.add_column(col, justify=just, overflow="fold")
    for c in report.checks:
        ms = "" if c.latency_ms is None else f"{c.latency_ms:.0f}"
        table.add_row(c.name, f"[{COLOUR[c.status]}]{c.status}[/]", ms, escape(c.reason))
    console().print(table)


def health_line(report) -> str:
    parts = [f"[{COLOUR[c.status]}]{c.name} {c.status}[/]" for c in report.checks]
    gen = report.check("generate")
    extra = f"  ttft {gen.data['ttft_s'] * 1000:.0f} ms, {gen.data['tokens_per_s']} tok/s" if gen and gen.data.get("ttft_s") else ""
    worst = next((c for c in report.checks if c.status == "fail"), None) or next((c for c in report.checks if c.status == "degraded"), None)
    why = f"  ({worst.name}: {escape(worst.reason)})" if worst else ""
    return f"{clock(report.started)} {escape(report.host)} " + " ".join(parts) + extra + why


def clock(epoch: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(epoch))
