"""The advisories that apply to an Ollama version: from OSV when asked and reachable, else orch's built-in table.

OSV (https://osv.dev) gathers the Go vulnerability database and GitHub's
advisories; one POST to /v1/query with the version and the package
`github.com/ollama/ollama` (ecosystem Go) answers the vulnerabilities that
affect it. Answers are cached per version for a day. The built-in table
(vulns.py) is the default: a health probe should not tell a third party which
server version a private box runs, and an offline box would wait on every
probe. OSV's findings are added to the table's, never put in their place (an
empty answer cannot hide what the table knows), and whatever goes wrong with
OSV (no network, a slow or malformed answer, a record it cannot read), the table
answers alone and the result says so.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from orchestrator import paths, settings
from orchestrator.ollama import vulns

OSV_URL, URL_ENV = settings.OSV_URL, settings.OSV_URL_ENV  # OSV's API, or a mirror of it (or a test's double) named in the env
PACKAGE = {"name": settings.OLLAMA_MODULE, "ecosystem": "Go"}
TTL = 24 * 3600
FEEDS = ("builtin", "osv")
UNKNOWN_MITIGATION = f"keep Ollama on loopback (orch's default) and read the advisory (https://osv.dev/list?q={PACKAGE['name']})"


@dataclass(frozen=True)
class Findings:
    advisories: list[vulns.Advisory]
    source: str  # where they came from, in words
    fallback: str = ""  # why OSV was not used, when it was asked for


def builtin(version: str) -> Findings | None:
    found = vulns.affecting(version)
    return None if found is None else Findings(found, f"orch's built-in table, checked {vulns.TABLE_DATE}")


def findings(version: str, feed: str = "builtin", *, timeout: float = 5.0, now: float | None = None) -> Findings | None:
    """The advisories for `version` (None when it is not a release number); `feed` osv asks OSV, falling back to the table."""
    table = builtin(version)
    if feed != "osv" or table is None:
        return table
    now = time.time() if now is None else now
    release = vulns.release_text(vulns.parse(version))
    cache = paths.cache_home() / "osv" / f"ollama-{release}.json"
    cached = _cached(cache, now)
    if cached is not None:
        return Findings(_with_table(table, cached[0]), f"OSV's answer cached {_when(cached[1])} and {table.source}")
    url = settings.osv_url()
    try:
        advisories = osv_query(url, release, timeout)
    except OsvUnusable as e:
        return Findings(table.advisories, table.source, f"OSV not used ({e})")
    _store(cache, now, advisories)
    return Findings(_with_table(table, advisories), f"OSV at {url}, asked {_when(now)}, and {table.source}")


def _with_table(table: Findings, found: list[vulns.Advisory]) -> list[vulns.Advisory]:
    """The table's advisories, then OSV's that the table does not name."""
    known = {a.cve for a in table.advisories}
    return [*table.advisories, *(a for a in found if a.cve not in known)]


class OsvUnusable(Exception):
    """OSV could not be asked, or answered something else than its documented shape."""


def osv_query(url: str, version: str, timeout: float) -> list[vulns.Advisory]:
    from orchestrator import transport

    body = {"version": version, "package": PACKAGE}
    try:
        r = transport.post_json(url, body, bounds=transport.Bounds(read=timeout, total=timeout, retries=1))
    except transport.TransportError as e:
        raise OsvUnusable(f"{url} did not answer: {transport.short(e)}") from None
    if r.status_code != 200:
        raise OsvUnusable(f"{url} answered HTTP {r.status_code}")
    try:
        answer = r.json()
    except ValueError:
        raise OsvUnusable(f"{url} answered something that is not JSON") from None
    if not isinstance(answer, dict) or not isinstance(answer.get("vulns", []), list):
        raise OsvUnusable(f"{url} answered JSON without a list of vulns")
    return [_advisory(v, url) for v in answer.get("vulns", [])]


def _advisory(v, url: str) -> vulns.Advisory:
    """One OSV record as an Advisory; a record of another shape makes the whole answer unusable (the table answers)."""
    if not isinstance(v, dict) or not isinstance(v.get("id"), str):
        raise OsvUnusable(f"{url} answered a vulnerability without an id")
    try:
        return _read_advisory(v)
    except (TypeError, ValueError, AttributeError, IndexError) as e:
        raise OsvUnusable(f"{url} answered a record of {v['id'][:40]!r} it could not read ({type(e).__name__})") from None


def _read_advisory(v: dict) -> vulns.Advisory:
    """Its CVE id where it has one, and the first fixed version its ranges name."""
    aliases = [a for a in v.get("aliases") or [] if isinstance(a, str)]
    cve = next((a for a in [v["id"], *aliases] if a.startswith("CVE-")), v["id"])
    fixed = None
    for affected in v.get("affected") or []:
        for rng in (affected or {}).get("ranges") or [] if isinstance(affected, dict) else []:
            if not isinstance(rng, dict) or rng.get("type") not in ("SEMVER", "ECOSYSTEM"):  # GIT ranges name commits
                continue
            for event in rng.get("events") or []:
                if isinstance(event, dict) and isinstance(event.get("fixed"), str):
                    if vulns.parse(event["fixed"]) is None:
                        raise ValueError(f"fixed version {event['fixed'][:20]!r}")
                    fixed = fixed or event["fixed"].lstrip("v")
    summary = (str(v.get("summary") or v.get("details") or "").strip().splitlines() or [v["id"]])[0][:160]
    known = next((a for a in vulns.ADVISORIES if a.cve == cve), None)
    mitigation = known.mitigation if known and known.mitigation else UNKNOWN_MITIGATION
    return vulns.Advisory(cve, summary, fixed=fixed, mitigation=mitigation if fixed is None else "")


def _cached(path: Path, now: float) -> tuple[list[vulns.Advisory], float] | None:
    try:
        data = json.loads(path.read_text())
        if now - float(data["fetched"]) > TTL:
            return None
        return [vulns.Advisory(**a) for a in data["advisories"]], float(data["fetched"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _store(path: Path, now: float, advisories: list[vulns.Advisory]) -> None:
    from dataclasses import asdict

    from orchestrator.files import write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps({"fetched": now, "advisories": [asdict(a) for a in advisories]}), mode=0o644)


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))
