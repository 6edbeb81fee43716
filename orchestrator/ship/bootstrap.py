"""The installer a bundle carries as install.py, for a box with no network and no orch yet:

    tar -xOf orch-bundle.tar install.py | python3 - orch-bundle.tar

Standard library only. It takes orch's own wheel out of the bundle into a
temporary folder, imports orch from it (a wheel is a zip Python imports from),
and hands over to orch.ship.unbundle, which checks the whole bundle before it
installs anything. (If the bundle crossed hands you do not trust, compare its
sha256 with the one `orch bundle create` printed first: this file is code from
the bundle.)
"""

import sys
import tarfile
import tempfile
from pathlib import Path

MAX_WHEEL = 64 << 20


def main(argv):
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: tar -xOf BUNDLE install.py | python3 - BUNDLE", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    bundle = Path(argv[0]).expanduser().absolute()
    with tempfile.TemporaryDirectory(prefix="orch-bundle-") as tmp:
        wheel = Path(tmp) / "orch.whl"
        try:
            with tarfile.open(bundle, "r:") as tar:
                member = next((m for m in tar if m.isreg() and m.name.startswith("wheels/orch-") and m.name.endswith(".whl")
                               and m.size <= MAX_WHEEL), None)
                if member is None:
                    raise tarfile.TarError("no orch wheel in it")
                with tar.extractfile(member) as src, open(wheel, "wb") as out:
                    out.write(src.read(MAX_WHEEL))
        except (OSError, tarfile.TarError, EOFError) as e:
            print(f"error: {bundle} is not a complete orch bundle ({e}): make it again with orch bundle create, or copy it again",
                  file=sys.stderr)
            return 2
        sys.path.insert(0, str(wheel))
        from orchestrator.ship import unbundle

        return unbundle.main([str(bundle)])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
