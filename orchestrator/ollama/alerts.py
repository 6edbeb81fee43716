"""Alerts from `orch health --watch`: a JSON POST to a webhook on every change of state (failed, recovered).

Delivery runs on a thread of its own, so a slow or dead receiver never holds
up probing. Each alert is retried with growing pauses until the receiver
takes it (any 2xx) or it is an hour old; alerts go out one at a time in the
order they happened, each once (an `id` lets a receiver drop a repeat, should
one arrive after a lost reply). A webhook URL often carries its secret in
its path, so only its scheme and host are ever printed.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlparse

from orchestrator.errors import BadInput
from orchestrator import transport

FORMATS = ("json", "slack")
MAX_AGE = 3600.0
MAX_PAUSE = 60.0


def redact(url: str) -> str:
    """The webhook as it may be shown: scheme and host, never the path or query that hold its token."""
    u = urlparse(url)
    try:
        port = f":{u.port}" if u.port else ""
    except ValueError:  # not a number: shown as nothing rather than raised
        port = ""
    return f"{u.scheme}://{u.hostname}{port}/…"


def validate(url: str, fmt: str) -> None:
    u = urlparse(url)
    try:
        u.port  # a port of "abc" or 99999 raises here, not at the first alert
    except ValueError:
        raise BadInput(f"--alert-webhook {redact(url) if u.hostname else 'value'} has no valid port: pass the receiver's full URL") from None
    if u.scheme not in ("http", "https") or not u.hostname:
        raise BadInput(f"--alert-webhook {redact(url) if u.hostname else 'value'} is not an http(s) URL: pass the receiver's full URL")
    if fmt not in FORMATS:
        raise BadInput(f"--alert-format {fmt} is not one of {', '.join(FORMATS)}")


@dataclass
class Alert:
    id: str
    kind: str  # failed | recovered
    message: str
    time: float
    host: str
    model: str | None
    failing: list[dict]

    def body(self, fmt: str) -> dict:
        if fmt == "slack":  # Slack's incoming webhooks; Mattermost and Rocket.Chat take the same
            icon = ":red_circle:" if self.kind == "failed" else ":large_green_circle:"
            return {"text": f"{icon} orch health {self.host}: {self.message}"}
        return {"id": self.id, "source": "orch health", "kind": self.kind, "message": self.message, "time": round(self.time, 3),
                "host": self.host, "model": self.model, "failing": self.failing}


class Alerter:
    """Sends alerts in order from a background thread; `send` only enqueues."""

    def __init__(self, url: str, fmt: str = "json", *, on_note: Callable[[str], None] = lambda text: None,
                 max_age: float = MAX_AGE, timeout: float = 10.0):
        validate(url, fmt)
        self.url, self.fmt, self.on_note, self.max_age, self.timeout = url, fmt, on_note, max_age, timeout
        self.queue: queue.Queue[Alert | None] = queue.Queue()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="alerts", daemon=True)
        self.thread.start()

    def send(self, kind: str, message: str, when: float, host: str, model: str | None, failing: list[dict]) -> Alert:
        alert = Alert(uuid.uuid4().hex, kind, message, when, host, model, failing)
        self.queue.put(alert)
        return alert

    def close(self, wait: float = 5.0) -> None:
        """Stop after what is queued has had `wait` seconds to go out."""
        self.queue.put(None)
        self.thread.join(wait)
        self.stopping.set()
        self.thread.join(1.0)

    def _run(self) -> None:
        while (alert := self.queue.get()) is not None:
            self._deliver(alert)

    def _deliver(self, alert: Alert) -> None:
        pause, attempt = 1.0, 0
        while not self.stopping.is_set():
            attempt += 1
            try:
                r = transport.post_json(self.url, alert.body(self.fmt), bounds=transport.Bounds(read=self.timeout, total=self.timeout))
                if 200 <= r.status_code < 300:
                    return
                why = f"HTTP {r.status_code}"
            except transport.TransportError as e:
                why = type(e).__name__
            if time.time() - alert.time > self.max_age:
                self.on_note(f"alert dropped after {attempt} attempts to {redact(self.url)} ({why}): {alert.message}")
                return
            if attempt == 1:
                self.on_note(f"alert not delivered to {redact(self.url)} ({why}); retrying until it is")
            self.stopping.wait(pause)
            pause = min(pause * 2, MAX_PAUSE)
