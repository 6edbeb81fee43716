"""`orch health`: against the real Ollama when healthy and through a real outage; against the API double for each fault
the real server cannot be made to show (HTML pages, cut streams, a CVE version, a dying llama.cpp): the right status and
reason for every one."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time

import httpx
import pytest

from orchestrator.ollama.probe import _local_addresses
from orchestrator.settings import OLLAMA_SOURCE_VERSION
from support import ORCH, TINY_NAME, cli, read_json_lines, serving_tiny

MODEL = TINY_NAME


@pytest.fixture
def served(ollama_double, tiny_build):
    """A double with the tiny model registered through `orch register`."""
    return serving_tiny(ollama_double, tiny_build)


def health(url: str, *args: str):
    t = time.monotonic()
    proc = cli("health", "--host", url, "--json", *args, check=False)
    seconds = time.monotonic() - t
    assert "Traceback" not in proc.stderr, proc.stderr
    report = json.loads(proc.stdout) if proc.stdout.strip() else None
    return proc, report, seconds


def check(report: dict, name: str) -> dict:
    return next(c for c in report["checks"] if c["name"] == name)


def test_a_healthy_server_is_ok_with_tokens_really_generated(real_served):
    """The real Ollama: every check, the OpenAI route and /api/ps placement included."""
    proc, report, _ = health(real_served().url, "--model", MODEL, "--openai")
    assert proc.returncode == 0 and report["ok"], [c for c in report["checks"] if c["status"] != "ok"]
    assert {c["name"]: c["status"] for c in report["checks"]} == {
        "server": "ok", "version": "ok", "model": "ok", "generate": "ok", "chat": "ok", "openai": "ok", "placement": "ok",
        "exposure": "ok"}
    gen = check(report, "generate")["data"]
    assert gen["eval_count"] > 0 and gen["text"].strip() and gen["tokens_per_s"] > 0 and gen["ttft_s"] is not None
    # a fresh server: the first probe loads the model, and Ollama's own figure for it is kept apart from the wait
    assert 0 < gen["load_s"] < gen["ttft_s"], gen
    assert check(report, "version")["data"]["version"] == OLLAMA_SOURCE_VERSION


def test_the_table_names_every_check(real_served):
    """The real Ollama."""
    proc = cli("health", "--host", real_served().url)
    for name in ("server", "version", "model", "generate", "chat", "placement"):
        assert re.search(rf"│ {name}\s+│ ok", proc.stdout), proc.stdout


def test_connection_refused(unused_port):
    proc, report, seconds = health(f"http://127.0.0.1:{unused_port}", "--timeout", "2")
    assert proc.returncode == 1 and seconds < 10
    assert check(report, "server")["status"] == "fail" and "connection refused" in check(report, "server")["reason"]
    assert check(report, "server")["reason"].endswith("start it (ollama serve, or orch up), or pass --host"), "the one advice chat and bench give"
    assert check(report, "generate")["status"] == "skipped"


def test_a_server_that_accepts_and_never_answers():
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel accepts; nobody ever reads or writes
        proc, report, seconds = health(f"http://127.0.0.1:{silent.getsockname()[1]}", "--timeout", "2")
    assert proc.returncode == 1 and seconds < 2 + 8
    assert check(report, "server") | {"latency_ms": None} == {
        "name": "server", "status": "fail", "reason": "no answer within the timeout", "latency_ms": None, "data": {}}


@pytest.mark.parametrize("fault, args, failed, reason", [
    (dict(kind="slow_first_token", delay=6, path="/api/generate"), ["--timeout", "2"], "generate", r"no token within 2 s"),
    (dict(kind="http500"), [], "version", r"HTTP 500: injected internal server error"),
    (dict(kind="malformed_line", path="/api/generate"), [], "generate", r"malformed JSON line"),
    (dict(kind="error_line", path="/api/chat"), [], "chat", r"reported an error mid-stream: an error was encountered"),
    (dict(kind="cut_stream", path="/api/generate"), [], "generate", r"stream ended before its final done line"),
    (dict(kind="html"), [], "server", r"HTML page, not Ollama's greeting|an HTML page"),
    (dict(kind="leak_marker", path="/api/chat"), [], "chat", r"'<reserved_106>' leaked into the reply"),
])
def test_each_fault_fails_the_right_check_with_a_plain_reason(served, fault, args, failed, reason):
    double = served()
    double.fault(**fault)
    proc, report, seconds = health(double.url, "--model", MODEL, *args)
    assert proc.returncode == 1
    assert check(report, failed)["status"] == "fail"
    assert re.search(reason, check(report, failed)["reason"]), check(report, failed)["reason"]
    assert seconds < 20


@pytest.mark.parametrize("share, status, reason", [
    (1.0, "ok", "fully in GPU memory"),
    (0.5, "degraded", "spilled: 50% in GPU memory"),
    (0.0, "ok", "on the CPU"),
])
def test_placement_is_judged_from_the_servers_own_ps_not_the_probers_gpu(served, tmp_path, monkeypatch, share, status, reason):
    """The server's /api/ps (size_vram against size) decides; an nvidia-smi on the prober's PATH changes nothing."""
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'NVIDIA H200, 143771 MiB'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    double = served()
    double.fault("vram", share=share, path="/api/ps")
    _, report, _ = health(double.url, "--model", MODEL)
    placement = check(report, "placement")
    assert placement["status"] == status and reason in placement["reason"], placement


@pytest.mark.parametrize("error", [
    "llama-server process has terminated: signal: segmentation fault (core dumped)",  # Ollama since 0.30
    "llama runner process has terminated: signal: illegal instruction (core dumped)",  # before
])
def test_a_server_whose_llama_cpp_dies_at_the_first_token_is_told_the_amx_fix(served, error):
    """The Ollama double answers /api/generate as Ollama does when its llama.cpp crashes on an AMX CPU."""
    double = served()
    double.fault("http500", error=error, path="/api/generate")
    proc, report, _ = health(double.url, "--model", MODEL)
    reason = check(report, "generate")["reason"]
    assert proc.returncode == 1 and error in reason
    assert "amx_int8 in /proc/cpuinfo" in reason and "upgrade Ollama to 0.32.2" in reason and "-mno-amx-int8" in reason


def test_a_model_the_server_lacks_is_a_404_named_in_plain_words(served):
    double = served()
    proc, report, _ = health(double.url, "--model", "nosuch:latest")
    assert proc.returncode == 1
    assert f"nosuch:latest is not on the server at {double.url}, which has tiny:q4_K_M" in check(report, "model")["reason"]
    proc, report, _ = health(double.url, "--model", "tiny:q4_k_m")
    assert check(report, "model")["reason"].endswith("did you mean tiny:q4_K_M?"), "a tag's case mistyped"


def test_a_slow_first_token_within_the_timeout_is_degraded_not_failed(served):
    double = served()
    double.fault("slow_first_token", delay=1.5, path="/api/generate")
    proc, report, _ = health(double.url, "--model", MODEL, "--slow", "0.5", "--timeout", "10")
    assert proc.returncode == 0
    gen = check(report, "generate")
    assert gen["status"] == "degraded" and "(slower than 0.5 s)" in gen["reason"]
    waited = float(re.search(r"first token after ([0-9.]+) s", gen["reason"])[1])
    assert 1.5 <= waited < 10, "the wait it measured: the double's delay at least, within the timeout"


UNPATCHED = ["CVE-2026-5757", "CVE-2026-65315"]  # no release fixes them: every version is open to them


@pytest.mark.parametrize("version, cves", [
    ("0.13.9", ["CVE-2026-7482", "CVE-2026-7020", "CVE-2026-5530", "CVE-2026-86289"]),
    ("0.14.0", ["CVE-2026-7482", "CVE-2026-7020", "CVE-2026-102697", "CVE-2026-5530", "CVE-2026-86289"]),
    ("0.17.0", ["CVE-2026-7482", "CVE-2026-7020", "CVE-2026-102697", "CVE-2026-5530", "CVE-2026-86289"]),
    ("0.17.1", ["CVE-2026-7020", "CVE-2026-102697", "CVE-2026-5530", "CVE-2026-86289"]),
    ("0.18.1", ["CVE-2026-7020", "CVE-2026-102697", "CVE-2026-5530", "CVE-2026-86289"]),
    ("0.18.2", ["CVE-2026-7020", "CVE-2026-102697", "CVE-2026-86289"]),
    ("0.20.2", ["CVE-2026-7020", "CVE-2026-102697", "CVE-2026-86289"]),
    ("0.20.3", ["CVE-2026-102697", "CVE-2026-86289"]),
    ("0.29.9", ["CVE-2026-102697", "CVE-2026-86289"]),
    ("0.30.0", ["CVE-2026-85180", "CVE-2026-102697", "CVE-2026-86289"]),
    ("0.31.1", ["CVE-2026-85180", "CVE-2026-102697", "CVE-2026-86289"]),
    ("0.31.2", ["CVE-2026-85180"]),
    ("0.33.2", ["CVE-2026-85180"]),
    ("0.33.3", []),
    ("0.34.1", []),
    ("0.34.2", ["CVE-2026-103663"]),
    ("0.34.9", ["CVE-2026-103663"]),
    ("0.35.0", []),
    ("0.40.2", []),
])
def test_the_version_is_checked_against_every_known_cve_at_its_range_boundaries(version, cves):
    from orchestrator.ollama import vulns

    assert [a.cve for a in vulns.affecting(version)] == cves + UNPATCHED


def test_a_vulnerable_server_is_flagged_with_the_cve_and_the_fix(served):
    double = served(version="0.34.2")
    proc, report, _ = health(double.url, "--model", MODEL)
    assert proc.returncode == 0
    version = check(report, "version")
    assert version["status"] == "degraded" and version["data"]["cves"] == ["CVE-2026-103663", *UNPATCHED]
    assert "CVE-2026-103663" in version["reason"] and "fixed in 0.35.0" in version["reason"]


def test_a_server_listening_beyond_loopback_is_flagged(served):
    addresses = _local_addresses()
    assert addresses, "this test needs a non-loopback IPv4 address on the machine"
    double = served(bind="0.0.0.0")
    proc, report, _ = health(double.url, "--model", MODEL)
    exposure = check(report, "exposure")
    assert exposure["status"] == "degraded" and f"{addresses[0]}:{double.port}" in exposure["reason"]


def test_usage_errors_exit_2():
    assert cli("health", "--timeout", "soon", check=False).returncode == 2
    assert cli("health", "--metrics-port", "9100", check=False).returncode == 2
    assert cli("health", "--alert-webhook", "http://127.0.0.1:9/hook", check=False).returncode == 2  # needs --watch
    assert cli("health", "--watch", "--alert-webhook", "not a url", check=False).returncode == 2


def test_watch_reports_an_outage_and_the_recovery_and_serves_metrics(real_served, unused_port):
    """The real Ollama, stopped and started again on its port with its store."""
    server = real_served()
    # the model loaded first, and a probe timeout no busy machine reaches: this test is about the outage it causes (a
    # stopped server refuses at once), and in CI a cold load, then a probe on a machine busy with the suite's other
    # worker, outlasted a 2 s timeout and failed a probe before the first ok, leaving the availability under 1
    httpx.post(f"{server.url}/api/generate", json={"model": MODEL, "prompt": "你好", "stream": False,
                                                   "options": {"num_predict": 1}}, timeout=300).raise_for_status()
    cmd = [str(ORCH), "health", "--host", server.url, "--model", MODEL, "--watch", "--interval", "0.3", "--failures", "2",
           "--timeout", "60", "--json", "--metrics-port", str(unused_port)]
    started = time.time()
    watcher = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    lines: list[dict] = []

    def read_until(predicate, timeout=60):
        lines.extend(read_json_lines(watcher, predicate, timeout))
        return lines[-1]

    host = f'host="{server.url}"'
    try:
        assert read_until(lambda r: r.get("ok") is True)["availability"] == 1.0, lines
        metrics = httpx.get(f"http://127.0.0.1:{unused_port}/metrics", timeout=5).text
        assert f'orch_health_check_status{{check="generate",{host}}} 0.0' in metrics
        assert re.search(rf'orch_health_tokens_per_second\{{check="generate",{host}\}} [1-9]', metrics)
        assert re.search(rf'orch_health_time_to_first_token_seconds\{{check="generate",{host}\}} \d', metrics)
        assert f"orch_health_availability_ratio{{{host}}} 1.0" in metrics
        p95 = float(re.search(rf"orch_health_ttft_p95_seconds\{{{host}\}} (\S+)", metrics).group(1))
        assert 0 < p95 == float(re.search(r"^orch_autoscale_ttft_p95_seconds (\S+)$", metrics, re.M).group(1)), metrics

        server.stop()
        first = read_until(lambda r: "checks" in r)  # one failure is not yet an outage: no event, no alert
        assert check(first, "server")["status"] == "degraded" and "failing (1 of 2" in check(first, "server")["reason"]
        outage = read_until(lambda r: True)
        assert outage.get("kind") == "outage" and outage["event"].startswith("outage: the server stopped answering"), outage
        counted = read_until(lambda r: "checks" in r)
        assert check(counted, "server")["status"] == "fail" and counted["ok"] is False
        metrics = httpx.get(f"http://127.0.0.1:{unused_port}/metrics", timeout=5).text
        assert f"orch_health_up{{{host}}} 0.0" in metrics and f"orch_health_availability_ratio{{{host}}} 1.0" not in metrics
        assert counted["availability"] < 1

        server.start()  # the same port and store: the server comes back with its models
        recovered = read_until(lambda r: "event" in r, timeout=90)
        assert recovered["kind"] == "recovered" and recovered["event"].startswith("recovered: the server answers again after")
        read_until(lambda r: r.get("ok") is True)
    finally:
        watcher.send_signal(signal.SIGINT)
        _, err = watcher.communicate(timeout=30)
    assert watcher.returncode == 0 and "Traceback" not in err
    # one clock for every line, reports and events alike: wall-clock epoch seconds, in the order they were printed
    times = [line["time"] for line in lines]
    assert all(started - 5 < t < time.time() + 5 for t in times), times
    assert times == sorted(times)


@pytest.fixture
def webui_stub():
    """A stand-in for Open WebUI's /health route (only that route: the real app is the orch up issue's)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    answers = {"body": b'{"status":true}', "type": "application/json", "authorization": []}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            answers["authorization"].append(self.headers.get("Authorization"))
            self.send_response(200 if self.path == "/health" else 404)
            self.send_header("Content-Type", answers["type"])
            self.send_header("Content-Length", str(len(answers["body"])))
            self.end_headers()
            self.wfile.write(answers["body"])

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", answers
    server.shutdown()


def test_open_webui_health_is_checked_when_a_url_is_given(served, webui_stub):
    double = served()
    url, answers = webui_stub
    proc, report, _ = health(double.url, "--model", MODEL, "--webui", url)
    assert proc.returncode == 0 and check(report, "webui")["status"] == "ok"

    answers.update(body=b"<html>502 Bad Gateway</html>", type="text/html")
    proc, report, _ = health(double.url, "--model", MODEL, "--webui", url)
    assert proc.returncode == 1 and "not JSON" in check(report, "webui")["reason"]

    # a proxy in front of it asks for a password: sent as HTTP Basic, and never printed
    secret_url = url.replace("http://", "http://ops:s3cr%40t@")
    proc, report, _ = health(double.url, "--model", MODEL, "--webui", secret_url)
    import base64

    assert answers["authorization"][-1] == "Basic " + base64.b64encode(b"ops:s3cr@t").decode()
    assert "s3cr" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert url in check(report, "webui")["reason"]


def test_watch_backs_off_while_the_server_is_down_and_keeps_a_rolling_window():
    from orchestrator.ollama.probe import FAIL, OK, Check, Report
    from orchestrator.ollama.watch import Watch

    def report(server: str) -> Report:
        return Report("http://x", None, [Check("server", server, "")], time.time(), 0.0)

    watch = Watch(failures=2, history=4)
    watch.observe(report(OK))
    assert watch.next_delay(5) == 5
    delays = []
    for _ in range(6):
        watch.observe(report(FAIL))
        delays.append(watch.next_delay(5, max_backoff=60))
    assert delays == [5, 10, 20, 40, 60, 60]
    assert watch.availability() == 0.0, "only the last 4 probes count, all failed"
    watch.observe(report(OK))
    assert watch.next_delay(5) == 5 and watch.availability() == 0.25


def test_a_failure_not_yet_judged_still_counts_against_availability_and_ok(unused_port):
    """`--watch --failures 2` at a refused port: the first probe is degraded (one of two) but not ok, and not available."""
    cmd = [str(ORCH), "health", "--host", f"http://127.0.0.1:{unused_port}", "--watch", "--interval", "0.2", "--failures", "2",
           "--json"]
    watcher = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = read_json_lines(watcher, lambda r: "checks" in r)[-1]
    finally:
        watcher.send_signal(signal.SIGINT)
        watcher.communicate(timeout=30)
    assert check(first, "server")["status"] == "degraded" and "failing (1 of 2" in check(first, "server")["reason"]
    assert first["ok"] is False and first["availability"] == 0.0


def test_watch_reports_another_check_failing_while_one_already_fails():
    """The README's promise: an outage, another check failing, and the recovery are each an event, each once."""
    from orchestrator.ollama.probe import FAIL, OK, Check, Report
    from orchestrator.ollama.watch import Watch

    def report(**statuses) -> Report:
        return Report("http://x", None, [Check(name, status, f"{name} broke") for name, status in statuses.items()], time.time(), 0)

    watch = Watch(failures=1)
    steps = [
        (dict(server=OK, generate=OK, chat=OK), []),
        (dict(server=OK, generate=FAIL, chat=OK), ["failed: generate: generate broke"]),
        (dict(server=OK, generate=FAIL, chat=OK), []),
        (dict(server=OK, generate=FAIL, chat=FAIL), ["failed: another check: chat: chat broke"]),
        (dict(server=OK, generate=FAIL, chat=FAIL), []),
        (dict(server=OK, generate=OK, chat=OK), ["recovered: every check passes again"]),
    ]
    for statuses, want in steps:
        _, events = watch.observe(report(**statuses))
        assert [e.message.split(" after ")[0] for e in events] == want, statuses


def test_a_down_server_backs_off_on_its_own_schedule_while_an_up_one_keeps_its_interval():
    """Two servers watched together: the one that is down is probed less and less often, the other every interval."""
    from orchestrator.ollama.probe import FAIL, OK, Check, Probe, Report
    from orchestrator.ollama.watch import run

    now = [0.0]
    probed: dict[str, list[float]] = {"up": [], "down": []}

    class Clock:
        """stop.wait advances a clock of the test's own instead of sleeping."""

        def is_set(self):
            return now[0] > 60

        def wait(self, seconds):
            now[0] += seconds

    def fake_probe(spec: Probe) -> Report:
        probed[spec.host].append(now[0])
        return Report(spec.host, None, [Check("server", OK if spec.host == "up" else FAIL, "")], time.time(), 0)

    run([Probe("up"), Probe("down")], interval=1, failures=1, on_report=lambda r, w: None, on_event=lambda e: None,
        stop=Clock(), probe_with=fake_probe, clock=lambda: now[0])
    gaps_up = {round(b - a, 6) for a, b in zip(probed["up"], probed["up"][1:])}
    gaps_down = [round(b - a, 6) for a, b in zip(probed["down"], probed["down"][1:])]
    assert gaps_up == {1.0} and len(probed["up"]) >= 60
    assert gaps_down[:5] == [1, 2, 4, 8, 16] and len(probed["down"]) < 10


def test_credentials_in_the_host_url_are_sent_but_never_shown(served, tmp_path):
    """--host http://user:pass@host (a proxy's basic auth): not in the JSON, the metrics labels, or an alert's body."""
    import socket as sockets

    import httpx

    double = served()
    secret_url = double.url.replace("http://", "http://orch:s3cr3t-pass@")
    proc, report, _ = health(secret_url, "--model", MODEL)
    assert proc.returncode == 0 and report["host"] == double.url and "s3cr3t" not in proc.stdout + proc.stderr
    import base64

    sent = {a for a in double.stats()["authorization"] if a}
    assert sent == {"Basic " + base64.b64encode(b"orch:s3cr3t-pass").decode()}, "every request carried the credentials"

    with sockets.socket() as s:
        s.bind(("127.0.0.1", 0))
        metrics_port = s.getsockname()[1]
    received = []

    from test_alerts import Receiver

    receiver = Receiver()
    monitor = subprocess.Popen([str(ORCH), "health", "--host", secret_url, "--model", MODEL, "--watch", "--interval", "0.3",
                                "--failures", "1", "--json", "--metrics-port", str(metrics_port), "--alert-webhook", receiver.url],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        read_json_lines(monitor, lambda r: r.get("ok") is True)
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        double.stop()
        received = receiver.wait_for(1)
    finally:
        monitor.send_signal(signal.SIGINT)
        out, err = monitor.communicate(timeout=30)
        receiver.server.shutdown()
    assert f'host="{double.url}"' in metrics and "s3cr3t" not in metrics
    assert received and received[0]["host"] == double.url and "s3cr3t" not in json.dumps(received)
    assert "s3cr3t" not in out + err


def chat_report(host: str, at: float, chat: str, ttft: float | None = None, waited_ms: float | None = None, took: float = 0.1,
                load: float = 0.0):
    from orchestrator.ollama.probe import Check, Report

    data = {"ttft_s": ttft, "load_s": load} if ttft is not None else {}
    return Report(host, MODEL, [Check("chat", chat, "", waited_ms, data)], at, took)


@pytest.mark.parametrize("reports, now, by_host, signal", [
    # the nearest-rank p95 of few samples is the slowest: a load step shows at the next probe
    ([("a", 0, "ok", 0.1), ("a", 1, "ok", 0.2), ("a", 2, "ok", 3.0)], 2, {"a": 3.0}, 3.0),
    # samples older than the window are gone: the signal falls after the load
    ([("a", 0, "ok", 3.0), ("a", 50, "ok", 0.1), ("a", 61, "ok", 0.2)], 61, {"a": 0.2}, 0.2),
    # a chat that failed (it timed out in the queue) counts the time it waited; a skipped one (server down) nothing
    ([("a", 0, "fail", None, 30000.0), ("b", 0, "skipped")], 1, {"a": 30.0}, 30.0),
    # the mean over the servers: one busy replica of two
    ([("a", 0, "ok", 0.1), ("b", 0, "ok", 2.1)], 1, {"a": 0.1, "b": 2.1}, 1.1),
    # a probe that took longer than the window (it queued behind the load) still counts when it ends
    ([("a", 0, "ok", 75.0, None, 80.0)], 80, {"a": 75.0}, 75.0),
    # a new replica's first reply loads the model: the load is left out, or each replica that starts would add another
    ([("a", 0, "ok", 6.3, None, 6.4, 6.1), ("a", 1, "ok", 0.1)], 1, {"a": 0.2}, 0.2),
    ([], 0, {}, 0.0),
])
def test_the_autoscaling_signal_is_each_servers_chat_ttft_p95_over_the_window(reports, now, by_host, signal):
    from orchestrator.ollama.watch import LoadWindow

    window = LoadWindow(seconds=60)
    for r in reports:
        window.add(chat_report(*r[:3], *r[3:]))
    assert window.by_host(now) == pytest.approx(by_host) and window.signal(now) == pytest.approx(signal)
