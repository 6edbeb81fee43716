"""`orch health --watch`: probe again and again, judge failures over a streak, report outages and recoveries, serve metrics.

The loop is the library's; the CLI only renders what it is handed. Every
report and event carries wall-clock epoch seconds.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

from orchestrator.ollama.probe import DEGRADED, FAIL, OK, SKIPPED, Check, Probe, Report, probe

STATUS_VALUE = {OK: 0, DEGRADED: 1, FAIL: 2, SKIPPED: 0}


@dataclass(frozen=True)
class Event:
    """A change worth telling someone about: the server went down (outage), came back (recovered), or a probe broke (error)."""

    kind: str
    message: str
    time: float  # wall clock, epoch seconds

    def as_dict(self) -> dict:
        return {"event": self.message, "kind": self.kind, "time": round(self.time, 3)}


class Watch:
    """Rolling state across probes: a check counts as failed only after `failures` in a row."""

    def __init__(self, failures: int = 3, history: int = 60):
        self.failures = failures
        self.streak: dict[str, int] = {}
        self.history: deque[Report] = deque(maxlen=history)
        self.down_since: float | None = None

    def observe(self, report: Report) -> tuple[Report, list[Event]]:
        """The report as the watcher judges it, and what changed (an outage began or ended)."""
        self.history.append(report)
        events, judged = [], []
        for c in report.checks:
            streak = self.streak[c.name] = self.streak.get(c.name, 0) + 1 if c.status == FAIL else 0
            if c.status == FAIL and streak < self.failures:
                c = Check(c.name, DEGRADED, f"failing ({streak} of {self.failures} before it counts): {c.reason}", c.latency_ms, c.data)
            judged.append(c)
        server = report.check("server")
        down = server is not None and server.status == FAIL
        if down and self.down_since is None:
            self.down_since = report.started
            events.append(Event("outage", f"outage: the server stopped answering ({server.reason})", report.started))
        elif not down and self.down_since is not None:
            events.append(Event("recovered", f"recovered: the server answers again after {report.started - self.down_since:.1f} s",
                                report.started))
            self.down_since = None
        return Report(report.host, report.model, judged, report.started, report.seconds), events

    def availability(self) -> float:
        """Share of the probes in the rolling window in which no check failed."""
        return sum(not r.failed for r in self.history) / len(self.history) if self.history else 1.0

    def next_delay(self, interval: float, max_backoff: float = 60.0) -> float:
        """The interval, doubled for each probe in a row the server was down, up to `max_backoff`."""
        down = self.streak.get("server", 0)
        return min(interval * (2 ** max(down - 1, 0)), max(interval, max_backoff)) if down else interval


def run(spec: Probe, *, interval: float, failures: int, on_report: Callable[[Report, Watch], None],
        on_event: Callable[[Event], None], stop: threading.Event | None = None, probes: int | None = None) -> None:
    """Probe until `stop` is set (or `probes` have run), handing each judged report and each event to the callbacks.

    The monitor outlives any fault of the server it watches: a probe that
    raises is an event, and the loop goes on.
    """
    stop = stop or threading.Event()
    watcher, count = Watch(failures=failures), 0
    while not stop.is_set() and (probes is None or count < probes):
        count += 1
        try:
            report, events = watcher.observe(probe(spec))
        except Exception as e:  # noqa: BLE001  the monitor must outlive any fault of the server it watches
            report, events = None, [Event("error", f"probe error ({type(e).__name__}: {e}); trying again", time.time())]
        for event in events:
            on_event(event)
        if report is not None:
            on_report(report, watcher)
        stop.wait(watcher.next_delay(interval))


class Metrics:
    """Prometheus gauges for the latest judged report, served on a port of their own."""

    def __init__(self, port: int, bind: str = "127.0.0.1"):
        from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

        self.registry = CollectorRegistry()
        self.status = Gauge("orch_health_check_status", "0 ok, 1 degraded, 2 failed", ["check"], registry=self.registry)
        self.latency = Gauge("orch_health_check_latency_seconds", "Latency of the check", ["check"], registry=self.registry)
        self.ttft = Gauge("orch_health_time_to_first_token_seconds", "Time to first token", ["check"], registry=self.registry)
        self.tps = Gauge("orch_health_tokens_per_second", "Generation speed from eval_count/eval_duration", ["check"],
                         registry=self.registry)
        self.up = Gauge("orch_health_up", "1 when no check failed", registry=self.registry)
        self.availability = Gauge("orch_health_availability_ratio", "Share of recent probes without a failed check",
                                  registry=self.registry)
        self.probes = Counter("orch_health_probes", "Probes run", registry=self.registry)
        self.server, self.thread = start_http_server(port, addr=bind, registry=self.registry)

    def update(self, report: Report, availability: float) -> None:
        self.probes.inc()
        self.up.set(0 if report.failed else 1)
        self.availability.set(availability)
        for c in report.checks:
            self.status.labels(c.name).set(STATUS_VALUE[c.status])
            if c.latency_ms is not None:
                self.latency.labels(c.name).set(c.latency_ms / 1000)
            if c.data.get("ttft_s") is not None:
                self.ttft.labels(c.name).set(c.data["ttft_s"])
            if c.data.get("tokens_per_s") is not None:
                self.tps.labels(c.name).set(c.data["tokens_per_s"])

    def close(self) -> None:
        self.server.shutdown()
