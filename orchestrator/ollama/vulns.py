"""Known vulnerabilities of the Ollama server, by version range: the one table `orch health` checks a server against.

Each entry is what its public record says (sources below); a range is
`introduced <= version` and either `< fixed` or `<= last_affected` when the
record names no fixed release. Update it when a new advisory appears, and
move the pinned image (stack/config.py) past every entry.

Sources, read 2026-11-23:
- CVE-2026-7482 / GHSA-x8qc-fggm-mpqg: "Ollama before 0.17.1", heap out-of-bounds read in the GGUF loader
  reached through /api/create; fixed in 0.17.1 (ollama/ollama#14406).
- CVE-2026-7020 / GHSA-x99g-8v8j-25j2: "Ollama up to 0.20.2", path traversal in digestToPath of the tensor
  model transfer; the record names no fixed release.
- CVE-2026-85180 / GHSA-57p7-34ff-7w3w (VulnCheck): SSRF through cross-host tensor blob redirects on pull,
  0.30.0 through 0.33.2; the record names no fixed release.
- CVE-2026-102697 / GHSA-44m8-pr79-3734 (VulnCheck): the agent mode's Bash approval bypass, 0.14.0 up to but
  not including 0.31.2.
- CVE-2026-103663 / GHSA-w8p2-phwr-px3r (CNA CERT Polska): path traversal through /api/pull layer digests, a
  file written outside the model store that runs as root on restart in the Docker image. CERT Polska's
  notice says "from 0.34.2 to 0.35.0" while naming 0.35.0 as the fix; the CVE record itself says affected
  0.34.2 lessThan 0.35.0, which is what this table holds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

Version = tuple[int, int, int]


def parse(version: str) -> Version | None:
    """'0.40.2', 'v0.40.2-rc1', '0.40.2-double' -> (0, 40, 2); None when there is no release number in it."""
    numbers = [int(x) for x in re.findall(r"\d+", version.split("-")[0])[:3]]
    return tuple(numbers) if len(numbers) == 3 else None  # type: ignore[return-value]


@dataclass(frozen=True)
class Advisory:
    cve: str
    summary: str
    introduced: str = "0.0.0"
    fixed: str | None = None  # the first release without it
    last_affected: str | None = None  # when the record names no fixed release

    def affects(self, version: Version) -> bool:
        if version < parse(self.introduced):
            return False
        if self.fixed is not None:
            return version < parse(self.fixed)
        return version <= parse(self.last_affected)

    @property
    def remedy(self) -> str:
        return f"fixed in {self.fixed}" if self.fixed else f"upgrade past {self.last_affected} (no fixed release on record)"


ADVISORIES = (
    Advisory("CVE-2026-7482", "heap out-of-bounds read through /api/create", fixed="0.17.1"),
    Advisory("CVE-2026-7020", "path traversal in the tensor model transfer", last_affected="0.20.2"),
    Advisory("CVE-2026-85180", "SSRF through cross-host blob redirects on pull", introduced="0.30.0", last_affected="0.33.2"),
    Advisory("CVE-2026-102697", "agent mode's command approval bypass", introduced="0.14.0", fixed="0.31.2"),
    Advisory("CVE-2026-103663", "path traversal through /api/pull, root code execution on restart", introduced="0.34.2",
             fixed="0.35.0"),
)


def affecting(version: str) -> list[Advisory] | None:
    """The advisories a server of this version is open to; None when the version is not a release number."""
    parsed = parse(version)
    if parsed is None:
        return None
    return [a for a in ADVISORIES if a.affects(parsed)]
