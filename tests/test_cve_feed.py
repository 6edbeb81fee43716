"""The vulnerability view of `orch health`: advisories no release fixes judged by exposure (against the real Ollama), and
OSV as the feed, answered by a loopback double of OSV's /v1/query in its documented shape, and by its failures."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from orchestrator.ollama import cve_feed
from support import cli, free_port

MODEL = "tiny:q4_K_M"
UNPATCHED = ["CVE-2026-5757", "CVE-2026-65315"]

# OSV's answer for a Go module, as https://google.github.io/osv.dev/post-v1-query/ documents it
OSV_ANSWER = {"vulns": [
    {"id": "GO-2026-4711", "aliases": ["CVE-2026-90001", "GHSA-aaaa-bbbb-cccc"], "summary": "Crafted manifest crashes the server",
     "affected": [{"package": {"ecosystem": "Go", "name": "github.com/ollama/ollama"},
                   "ranges": [{"type": "SEMVER", "events": [{"introduced": "0"}, {"fixed": "0.35.1"}]}]}]},
    {"id": "GHSA-dddd-eeee-ffff", "aliases": ["CVE-2026-5757"], "summary": "Heap disclosure through a crafted GGUF",
     "affected": [{"package": {"ecosystem": "Go", "name": "github.com/ollama/ollama"},
                   "ranges": [{"type": "SEMVER", "events": [{"introduced": "0"}]}]}]},
]}


class OsvDouble:
    """A loopback stand-in for api.osv.dev's /v1/query: answers `answer` (bytes or a dict), or holds the request."""

    def __init__(self, answer, *, hold: bool = False):
        self.answer, self.hold, self.asked, self.release = answer, hold, [], threading.Event()
        double = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                double.asked.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                if double.hold:
                    double.release.wait(60)
                body = double.answer if isinstance(double.answer, bytes) else json.dumps(double.answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/query"

    def close(self):
        self.release.set()
        self.server.shutdown()


@pytest.fixture
def osv(monkeypatch):
    made = []

    def start(answer=OSV_ANSWER, **kw) -> OsvDouble:
        d = OsvDouble(answer, **kw)
        made.append(d)
        monkeypatch.setenv(cve_feed.URL_ENV, d.url)
        return d

    yield start
    for d in made:
        d.close()


def test_osv_answers_in_its_documented_shape_are_read_and_cached(osv):
    double = osv()
    found = cve_feed.findings("0.34.1", "osv")
    assert double.asked == [{"version": "0.34.1", "package": {"name": "github.com/ollama/ollama", "ecosystem": "Go"}}]
    assert [(a.cve, a.fixed, a.unpatched) for a in found.advisories] == [("CVE-2026-5757", None, True), ("CVE-2026-65315", None, True),
                                                                         ("CVE-2026-90001", "0.35.1", False)]
    assert found.source.startswith(f"OSV at {double.url}") and not found.fallback
    again = cve_feed.findings("0.34.1", "osv")
    assert len(double.asked) == 1 and again.source.startswith("OSV's answer cached ")
    assert [a.cve for a in again.advisories] == [*UNPATCHED, "CVE-2026-90001"]
    later = cve_feed.findings("0.34.1", "osv", now=__import__("time").time() + cve_feed.TTL + 1)
    assert len(double.asked) == 2 and later.source.startswith("OSV at ")


@pytest.mark.parametrize("case, says", [
    ("offline", "did not answer"),
    ("malformed", "not JSON"),
    ("wrong shape", "without a list of vulns"),
    ("slow", "did not answer"),
])
def test_when_osv_cannot_answer_the_built_in_table_does_and_says_why(osv, monkeypatch, case, says):
    if case == "offline":
        monkeypatch.setenv(cve_feed.URL_ENV, f"http://127.0.0.1:{free_port()}/v1/query")
    else:
        osv({"malformed": b"<html>rate limited</html>", "wrong shape": {"vulns": "none"}, "slow": OSV_ANSWER}[case],
            hold=case == "slow")
    found = cve_feed.findings("0.34.2", "osv", timeout=2)
    assert [a.cve for a in found.advisories] == ["CVE-2026-103663", *UNPATCHED]
    assert found.source.startswith("orch's built-in table") and found.fallback.startswith("OSV not used") and says in found.fallback


def test_the_built_in_table_is_the_default_and_osv_is_not_asked(osv):
    double = osv()
    found = cve_feed.findings("0.34.1")
    assert double.asked == [] and found.source.startswith("orch's built-in table, checked ") and "(" not in found.source, "it is put in parentheses"


def version_check(url: str, *args: str) -> tuple[int, dict]:
    proc = cli("health", "--host", url, "--model", MODEL, "--json", *args, check=False)
    report = json.loads(proc.stdout)
    return proc.returncode, next(c for c in report["checks"] if c["name"] == "version")


def test_an_advisory_no_release_fixes_informs_on_loopback_and_fails_beyond_it(real_served):
    """The real Ollama, first on 127.0.0.1, then on every address (OLLAMA_HOST=0.0.0.0)."""
    from orchestrator.ollama.probe import _local_addresses

    code, version = version_check(real_served().url)
    assert code == 0 and version["status"] == "ok"
    assert [a["cve"] for a in version["data"]["unpatched"]] == UNPATCHED
    assert "keep Ollama on loopback" in version["data"]["unpatched"][0]["mitigation"]
    assert "safe while only this host reaches it" in version["reason"]

    assert _local_addresses(), "this test needs a non-loopback IPv4 address on the machine"
    code, version = version_check(real_served(bind="0.0.0.0").url)
    assert code == 1 and version["status"] == "fail"
    assert version["reason"].startswith("Ollama answers beyond loopback while open to CVE-2026-5757")


def test_health_with_the_osv_feed_says_which_source_it_used(real_served, osv):
    """The real Ollama, its version looked up in the OSV double."""
    server, double = real_served(), osv()
    code, version = version_check(server.url, "--cve-feed", "osv")
    assert double.asked[0]["version"] == version["data"]["version"]
    assert version["status"] == "degraded" and "CVE-2026-90001" in version["reason"] and "fixed in 0.35.1" in version["reason"]
    assert version["data"]["source"].startswith("OSV at ")


def record(**changes) -> dict:
    """OSV_ANSWER's first record with `changes`: what a broken or hostile feed might send."""
    return OSV_ANSWER["vulns"][0] | changes


UNREADABLE = {
    "aliases that are not a list": record(aliases=1),
    "a fixed version 5000 digits long": record(affected=[{"ranges": [{"type": "SEMVER", "events": [{"fixed": "9" * 5000}]}]}]),
    "ranges that are not a list": record(affected=[{"ranges": 7}]),
}


@pytest.mark.parametrize("case", list(UNREADABLE))
def test_a_record_osv_sends_that_cannot_be_read_leaves_the_table_answering(osv, case):
    osv({"vulns": [UNREADABLE[case], OSV_ANSWER["vulns"][1]]})
    found = cve_feed.findings("0.34.2", "osv", timeout=2)
    assert [a.cve for a in found.advisories] == ["CVE-2026-103663", *UNPATCHED]
    assert found.fallback.startswith("OSV not used") and "could not read" in found.fallback


@pytest.mark.parametrize("answer", [{}, {"vulns": []}, {"vulns": [record(summary="", details="")]}],
                         ids=["an empty object", "no vulns", "a blank summary"])
def test_what_osv_finds_is_added_to_the_table_never_put_in_its_place(osv, answer):
    osv(answer)
    found = cve_feed.findings("0.34.2", "osv", timeout=2)
    assert [a.cve for a in found.advisories][:3] == ["CVE-2026-103663", *UNPATCHED], "an empty answer cannot hide the table's"
    assert found.source.startswith("OSV at ") and "and orch's built-in table" in found.source and not found.fallback
    if answer.get("vulns"):
        assert found.advisories[-1].cve == "CVE-2026-90001" and found.advisories[-1].summary == "GO-2026-4711"


@pytest.mark.parametrize("version, open_to", [
    ("0.35.0-rc1", "CVE-2026-103663"),  # fixed in 0.35.0: its release candidates are not
    ("0.31.2-rc0", "CVE-2026-86289"),   # fixed in 0.31.2
    ("v0.31.2-rc1", "CVE-2026-102697"),
])
def test_a_pre_release_is_open_to_what_its_release_fixes(version, open_to):
    from orchestrator.ollama import vulns

    assert open_to in [a.cve for a in vulns.affecting(version)]
    assert open_to not in [a.cve for a in vulns.affecting(version.split("-")[0])]


def test_an_absurd_version_is_no_version_rather_than_a_crash():
    from orchestrator.ollama import vulns

    assert vulns.affecting("1" * 5000 + ".0.0") is None and vulns.affecting("0.1.2-" + "x" * 5000) is None
