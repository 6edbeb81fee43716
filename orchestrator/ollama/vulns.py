"""Known vulnerabilities of the Ollama server, by version range: the one table `orch health` checks a server against.

Each entry is what its public record says (sources below); a range is
`introduced <= version` and either `< fixed`, `<= last_affected` when the
record names no fixed release, or every later version when it names neither (an
unpatched advisory: its mitigation is what a user can do). Update it when a new
advisory appears, and move the pinned image (stack/config.py) past every entry
that has a fix. `orch health --cve-feed osv` asks OSV instead (cve_feed.py); this
table is what an offline box has.

Sources, read 2026-11-23 and 2026-12-01:
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
- CVE-2026-5530: SSRF in the model pull API (server/download.go), "Ollama up to 18.1" (0.18.1); the vendor did
  not answer the reporter, and the record names no fixed release.
- CVE-2026-86289 / GHSA-c2q9-58w2-gjg4: integer overflow in the GGUF v1 string decoder (readGGUFV1String); NVD
  "up to 0.31.1", fixed in 0.31.2 (0.31.2-rc1 first).
- CVE-2026-5757: heap memory disclosure through a crafted GGUF in the quantization path; CERT could not reach
  the vendor and no release is named as fixed: every version.
- CVE-2026-65315 / GHSA-9hhj-2jwx-r87p: uncontrolled allocation from GGUF metadata (a GGUF under 1 KB makes the
  server allocate until it is killed); the advisory names no affected or patched range: every version.

llama.cpp's own advisories, checked 2026-12-03 against what Ollama bundles (Ollama has run llama-server since
0.30.0, on 127.0.0.1, built from the llama.cpp tag in its LLAMA_CPP_VERSION file: b9452 in 0.30.0, b10069 in
0.32.2, b10864 in 0.34.1, b11081 in 0.34.4, read from the Go module proxy). Neither is in the table, because
neither reaches a release that bundles the affected code:
- CVE-2026-21869 / GHSA-8947-pfff-2f3c: a negative n_discard in llama-server's completion endpoints writes out of
  bounds at a context shift; "commits 55d4206c8 and prior", fixed by c78fb909b (ggml-org/llama.cpp#22267, merged
  2026-04-23). Every Ollama that runs llama-server bundles a later build (b9452 or later; llama.cpp had passed
  b9247 by 2026-05-20); every Ollama before 0.30 is already flagged above (CVE-2026-86289 reaches to 0.31.1). The
  llama-server that orch install-ollama builds (llama-cpp-python 0.3.36's tree) clamps n_discard to [0, n_left - 1].
- CVE-2026-43631: a use-after-free when a request races llama-server's idle sleep (--sleep-idle-seconds). Idle
  sleep is off unless that flag is given, and Ollama never gives it (it unloads by stopping llama-server:
  llm/llama_server.go in 0.34.1).
Add either, with its range of Ollama releases, if a release is found that bundles the affected code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

Version = tuple  # (major, minor, patch, 1 for a release or 0 for a pre-release, the pre-release's identifiers)


def parse(version: str) -> Version | None:
    """'0.40.2', 'v0.40.2' -> a key that orders as Go's semver does: '0.35.0-rc1' comes before '0.35.0' (a release
    candidate is open to what its release fixes). None when there is no release number in it, or an absurd one."""
    core = version.strip().lstrip("v").partition("+")[0]  # +build metadata does not order
    release, dash, pre = core.partition("-")
    numbers = re.findall(r"\d+", release)[:3]
    if len(numbers) != 3 or any(len(n) > 9 for n in numbers) or len(pre) > 64:
        return None
    ids = tuple((0, int(i), "") if i.isdigit() and len(i) <= 9 else (1, 0, i) for i in pre.split(".")) if dash else ()
    return (*map(int, numbers), 0 if dash else 1, ids)


def release_text(version: Version) -> str:
    """The version a key was parsed from, as OSV and a cache file name take it: 0.35.0, or 0.35.0-rc1."""
    pre = ".".join(str(n) if kind == 0 else text for kind, n, text in version[4])
    return ".".join(map(str, version[:3])) + (f"-{re.sub(r'[^0-9A-Za-z.-]', '', pre)}" if version[3] == 0 else "")


TABLE_DATE = "2026-12-01"  # when the table below was last checked against the records


@dataclass(frozen=True)
class Advisory:
    cve: str
    summary: str
    introduced: str = "0.0.0"
    fixed: str | None = None  # the first release without it
    last_affected: str | None = None  # when the record names no fixed release
    mitigation: str = ""  # what to do while no release fixes it

    @property
    def unpatched(self) -> bool:
        """No release is named as fixed, nor a last affected one: every version from `introduced` on."""
        return self.fixed is None and self.last_affected is None

    def affects(self, version: Version) -> bool:
        if version < parse(self.introduced):
            return False
        if self.fixed is not None:
            return version < parse(self.fixed)
        return self.unpatched or version <= parse(self.last_affected)

    @property
    def remedy(self) -> str:
        if self.unpatched:
            return f"no fixed release; {self.mitigation}"
        return f"fixed in {self.fixed}" if self.fixed else f"upgrade past {self.last_affected} (no fixed release on record)"


GGUF_MITIGATION = ("keep Ollama on loopback (orch's default) and create models only from GGUFs you built or trust; "
                   "never let untrusted clients reach /api/create or /api/blobs")
ADVISORIES = (
    Advisory("CVE-2026-7482", "heap out-of-bounds read through /api/create", fixed="0.17.1"),
    Advisory("CVE-2026-7020", "path traversal in the tensor model transfer", last_affected="0.20.2"),
    Advisory("CVE-2026-85180", "SSRF through cross-host blob redirects on pull", introduced="0.30.0", last_affected="0.33.2"),
    Advisory("CVE-2026-102697", "agent mode's command approval bypass", introduced="0.14.0", fixed="0.31.2"),
    Advisory("CVE-2026-103663", "path traversal through /api/pull, root code execution on restart", introduced="0.34.2",
             fixed="0.35.0"),
    Advisory("CVE-2026-5530", "SSRF through the model pull API", last_affected="0.18.1"),
    Advisory("CVE-2026-86289", "integer overflow in the GGUF v1 string decoder", fixed="0.31.2"),
    Advisory("CVE-2026-5757", "heap disclosure through a crafted GGUF in the quantization path", mitigation=GGUF_MITIGATION),
    Advisory("CVE-2026-65315", "uncontrolled allocation from GGUF metadata (a tiny GGUF exhausts memory)", mitigation=GGUF_MITIGATION),
)


def affecting(version: str) -> list[Advisory] | None:
    """The advisories a server of this version is open to; None when the version is not a release number."""
    parsed = parse(version)
    if parsed is None:
        return None
    return [a for a in ADVISORIES if a.affects(parsed)]
