"""`orch health --watch`: probe again and again, judge failures over a streak, report failures and recoveries, alert, serve metrics.

The loop is the library's; the CLI only renders what it is handed. Every
report and event carries wall-clock epoch seconds.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

from orchestrator.ollama.client import shown_host
from orchestrator.ollama.probe import DEGRADED, FAIL, OK, SKIPPED, Check, Probe, Report, probe

STATUS_VALUE = {OK: 0, DEGRADED: 1, FAIL: 2, SKIPPED: 0}
PAGED = ("outage", "failed", "recovered")  # not "worse": a second check failing in one outage is the same page


@dataclass(frozen=True)
class Event:
    """A change of state worth telling someone: failed (an outage when the server itself is down), recovered, or a probe error."""

    kind: str  # outage | failed | worse (another check fails in the same outage) | recovered | error
    message: str
    time: float  # wall clock, epoch seconds
    host: str = ""
    failing: tuple = ()

    def as_dict(self) -> dict:
        return {"event": self.message, "kind": self.kind, "host": self.host, "time": round(self.time, 3)}


class Watch:
    """Rolling state of one server across probes: a check counts as failed only after `failures` in a row.

    Events mark changes of the judged state, so a single slow probe neither
    reports an outage nor sends an alert.
    """

    def __init__(self, failures: int = 3, history: int = 60):
        self.failures = failures
        self.streak: dict[str, int] = {}
        self.history: deque[bool] = deque(maxlen=history)  # each probe as it was: True when no check failed
        self.failed_since: float | None = None
        self.outage = False
        self.failing: frozenset[str] = frozenset()  # the checks judged failed in the last report

    def observe(self, report: Report) -> tuple[Report, list[Event]]:
        """The report as the watcher judges it, and what changed (it began or stopped failing)."""
        judged = []
        for c in report.checks:
            streak = self.streak[c.name] = self.streak.get(c.name, 0) + 1 if c.status == FAIL else 0
            if c.status == FAIL and streak < self.failures:
                c = Check(c.name, DEGRADED, f"failing ({streak} of {self.failures} before it counts): {c.reason}", c.latency_ms, c.data)
            judged.append(c)
        self.history.append(not report.failed)  # availability counts what happened, before --failures judges it
        report = Report(report.host, report.model, judged, report.started, report.seconds)
        failing = tuple({"check": c.name, "reason": c.reason} for c in judged if c.status == FAIL)
        events = []
        now_failing = frozenset(f["check"] for f in failing)
        newly = [f for f in failing if f["check"] not in self.failing]
        self.failing = now_failing
        if failing and self.failed_since is not None and newly:  # already failing, and another check fails too
            message = "failed: another check: " + "; ".join(f"{f['check']}: {f['reason']}" for f in newly)
            events.append(Event("worse", message, report.started, report.host, failing))
        elif failing and self.failed_since is None:
            self.failed_since = report.started
            server = report.check("server")
            self.outage = server is not None and server.status == FAIL
            message = (f"outage: the server stopped answering ({server.reason})" if self.outage
                       else "failed: " + "; ".join(f"{f['check']}: {f['reason']}" for f in failing))
            events.append(Event("outage" if self.outage else "failed", message, report.started, report.host, failing))
        elif not failing and self.failed_since is not None:
            what = "the server answers again" if self.outage else "every check passes again"
            events.append(Event("recovered", f"recovered: {what} after {report.started - self.failed_since:.1f} s", report.started,
                                report.host))
            self.failed_since, self.outage = None, False
        return report, events

    def availability(self) -> float:
        """Share of the probes in the rolling window in which no check failed (a failure --failures has not yet judged counts)."""
        return sum(self.history) / len(self.history) if self.history else 1.0

    @property
    def last_ok(self) -> bool:
        """Whether the last probe had no failed check, as it was probed."""
        return self.history[-1] if self.history else True

    def next_delay(self, interval: float, max_backoff: float = 60.0) -> float:
        """The interval, doubled for each probe in a row the server was down, up to `max_backoff`."""
        down = self.streak.get("server", 0)
        return min(interval * (2 ** max(down - 1, 0)), max(interval, max_backoff)) if down else interval


def run(specs: list[Probe], *, interval: float, failures: int, on_report: Callable[[Report, Watch], None],
        on_event: Callable[[Event], None], alerter=None, stop: threading.Event | None = None, probes: int | None = None,
        probe_with: Callable[[Probe], Report] = probe, clock: Callable[[], float] = time.monotonic) -> None:
    """Probe every server in `specs` until `stop` is set (or each has had `probes`), handing each judged report and
    each event to the callbacks, and each change of state to the alerter.

    The monitor outlives any fault of the servers it watches: a probe that
    raises is an event, and the loop goes on. While a server is down its probes
    back off, up to a minute apart, each server on its own schedule: one that
    is down never slows the probes of one that is up.
    """
    stop = stop or threading.Event()
    watchers = [Watch(failures=failures) for _ in specs]
    done = [0] * len(specs)
    due = [clock()] * len(specs)
    while not stop.is_set():
        waiting = [i for i in range(len(specs)) if probes is None or done[i] < probes]
        if not waiting:
            return
        i = min(waiting, key=lambda k: due[k])
        if (pause := due[i] - clock()) > 0:
            stop.wait(pause)
            continue
        spec, watcher = specs[i], watchers[i]
        done[i] += 1
        try:
            report, events = watcher.observe(probe_with(spec))
        except Exception as e:  # noqa: BLE001  the monitor must outlive any fault of the server it watches
            report, events = None, [Event("error", f"probe error ({type(e).__name__}: {e}); trying again", time.time(),
                                          shown_host(spec.host))]
        for event in events:
            on_event(event)
            if alerter is not None and event.kind in PAGED:  # one page when it starts failing, one when it recovers
                alerter.send("recovered" if event.kind == "recovered" else "failed", event.message, event.time, event.host,
                             report.model if report else spec.model, list(event.failing))
        if report is not None:
            on_report(report, watcher)
        due[i] = clock() + watcher.next_delay(interval)


def p95(values: list[float]) -> float:
    """The nearest-rank 95th percentile: with few samples, the slowest of them (a load step shows at once)."""
    ranked = sorted(values)
    return ranked[max(math.ceil(0.95 * len(ranked)) - 1, 0)]


class LoadWindow:
    """The signal an autoscaler reads: each server's chat time to first token, p95 over the last `seconds`, and the mean
    of those over the servers.

    Ollama exposes no queue, and llama-server's /slots sits on a random port inside Ollama's process. But a request that
    finds every OLLAMA_NUM_PARALLEL slot busy waits in Ollama's scheduler before its first token, so the monitor's own
    chat probe measures the queue as users feel it. A probe that failed counts the time it waited. The time Ollama spent
    loading the model is left out: a replica's first request pays it once, and another replica would only pay it again,
    so counting it would scale up each time one starts.
    """

    def __init__(self, seconds: float = 60.0):
        self.seconds = seconds
        self.samples: dict[str, deque[tuple[float, float]]] = {}

    def add(self, report: Report) -> None:
        chat = report.check("chat")
        if chat is None or chat.status == SKIPPED:
            return
        waited = chat.data.get("ttft_s")
        if waited is not None:
            waited = max(waited - (chat.data.get("load_s") or 0.0), 0.0)
        if waited is None and chat.status == FAIL and chat.latency_ms is not None:
            waited = chat.latency_ms / 1000
        if waited is not None:  # stamped when the probe ended: one slowed by the queue must not arrive already expired
            self.samples.setdefault(report.host, deque()).append((report.started + report.seconds, waited))

    def by_host(self, now: float) -> dict[str, float]:
        out = {}
        for host, samples in self.samples.items():
            while samples and samples[0][0] < now - self.seconds:
                samples.popleft()
            if samples:
                out[host] = p95([v for _, v in samples])
        return out

    def signal(self, now: float) -> float:
        """The mean over the servers of their p95: an autoscaler scales by its ratio to the target."""
        values = list(self.by_host(now).values())
        return sum(values) / len(values) if values else 0.0


class Metrics:
    """Prometheus gauges for the latest judged report, served on a port of their own."""

    def __init__(self, port: int, bind: str = "127.0.0.1", load_window: float = 60.0):
        from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

        self.registry = CollectorRegistry()
        labels = ["host", "check"]
        self.status = Gauge("orch_health_check_status", "0 ok, 1 degraded, 2 failed", labels, registry=self.registry)
        self.latency = Gauge("orch_health_check_latency_seconds", "Latency of the check", labels, registry=self.registry)
        self.ttft = Gauge("orch_health_time_to_first_token_seconds", "Time to first token", labels, registry=self.registry)
        self.tps = Gauge("orch_health_tokens_per_second", "Generation speed from eval_count/eval_duration", labels,
                         registry=self.registry)
        self.up = Gauge("orch_health_up", "1 when no check failed", ["host"], registry=self.registry)
        self.availability = Gauge("orch_health_availability_ratio", "Share of recent probes without a failed check", ["host"],
                                  registry=self.registry)
        self.probes = Counter("orch_health_probes", "Probes run", ["host"], registry=self.registry)
        self.load = LoadWindow(load_window)
        self.ttft_p95 = Gauge("orch_health_ttft_p95_seconds", f"The chat probe's time to first token, p95 over {load_window:g} s",
                              ["host"], registry=self.registry)
        self.signal = Gauge("orch_autoscale_ttft_p95_seconds", "Mean over the servers of orch_health_ttft_p95_seconds: "
                            "what orch k8s render --autoscale scales on", registry=self.registry)
        self.server, self.thread = start_http_server(port, addr=bind, registry=self.registry)

    def update(self, report: Report, availability: float) -> None:
        host = report.host
        self.probes.labels(host).inc()
        self.up.labels(host).set(0 if report.failed else 1)
        self.availability.labels(host).set(availability)
        for c in report.checks:
            self.status.labels(host, c.name).set(STATUS_VALUE[c.status])
            if c.latency_ms is not None:
                self.latency.labels(host, c.name).set(c.latency_ms / 1000)
            if c.data.get("ttft_s") is not None:
                self.ttft.labels(host, c.name).set(c.data["ttft_s"])
            if c.data.get("tokens_per_s") is not None:
                self.tps.labels(host, c.name).set(c.data["tokens_per_s"])
        self.load.add(report)
        now = report.started + report.seconds
        for server, value in self.load.by_host(now).items():
            self.ttft_p95.labels(server).set(value)
        self.signal.set(self.load.signal(now))

    def close(self) -> None:
        self.server.shutdown()
