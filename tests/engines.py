"""A real Docker engine for the suite: Debian's dockerd, started once per session with its own data root and socket.

The data root is cached outside the clone (~/.cache/orch/test-docker), so the images `orch images build` made stay
for the next run. What dockerd changes in the kernel (iptables chains and rules, the docker0 and compose bridges,
veth pairs, net.ipv4.ip_forward) and under /run is recorded before it starts and put back when it stops; a run that crashed
before putting it back leaves its record, and the next start puts that back first.

    python tests/engines.py cleanup     # what a crashed run left: dockerd stopped, the kernel as it was, and the
                                        # Kubernetes control plane's processes stopped (tests/control_plane.py)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

# the machine's cache, not a test's own: conftest.py pins it in $ORCH_TEST_CACHE before any test isolates XDG_CACHE_HOME
CACHE_HOME = Path(os.environ.get("ORCH_TEST_CACHE") or os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
STATE = CACHE_HOME / "orch" / "test-docker"
DATA, RECORD, PIDFILE = STATE / "data", STATE / "before.json", STATE / "dockerd.pid"
EXEC_ROOT = Path("/run/orch-test-docker")
SOCKET = Path("/run/orch-test-docker.sock")
HOST = f"unix://{SOCKET}"
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
RUN_DIRS = (Path("/run/docker"), Path("/run/containerd"))
TABLES = {"filter": ("INPUT", "FORWARD", "OUTPUT"), "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")}  # dockerd's


def _links() -> list[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return sorted({line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line})


def snapshot() -> dict:
    """The kernel state dockerd changes, as it is now."""
    saved = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
    return {"iptables": saved, "ip_forward": IP_FORWARD.read_text().strip(), "links": _links(),
            "run_dirs": [str(d) for d in RUN_DIRS if d.exists()]}


def put_back(before: dict) -> None:
    """dockerd gone, and every chain, rule, bridge and veth it made, and ip_forward, as `before` recorded them."""
    _stop_dockerd()
    for link in set(_links()) - set(before["links"]):
        if link == "docker0" or link.startswith(("br-", "veth")):
            subprocess.run(["ip", "link", "delete", link], capture_output=True)
    subprocess.run(["iptables-restore"], input=before["iptables"], text=True, check=True)  # the tables that were in use
    for table, chains in TABLES.items():  # iptables-restore leaves alone a table its input lacks: one unused before is emptied
        if f"*{table}\n" not in before["iptables"]:
            for args in (["-F"], ["-X"], *(["-P", chain, "ACCEPT"] for chain in chains)):
                subprocess.run(["iptables", "-t", table, *args], capture_output=True)
    IP_FORWARD.write_text(before["ip_forward"] + "\n")
    shutil.rmtree(EXEC_ROOT, ignore_errors=True)
    for made in set(map(str, RUN_DIRS)) - set(before.get("run_dirs", [])):  # dockerd makes these whatever its exec root
        shutil.rmtree(made, ignore_errors=True)
    SOCKET.unlink(missing_ok=True)
    RECORD.unlink(missing_ok=True)


def _stop_dockerd(timeout: float = 60) -> None:
    try:
        pid = int(PIDFILE.read_text())
        if not Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"dockerd"):
            PIDFILE.unlink()  # a stale file: that pid is another program's now
            return
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError):
        return
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if alive(pid):
        os.kill(pid, signal.SIGKILL)
    PIDFILE.unlink(missing_ok=True)


def alive(pid: int) -> bool:
    """Still running: a child of this process that exited is reaped here, and a zombie counts as gone (kill(pid, 0)
    succeeds on one, which once held every stop of the suite's dockerd for its whole 60-second grace)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def cleanup() -> None:
    """Put back what a run that never finished left behind (its record says what was there before)."""
    if RECORD.is_file():
        put_back(json.loads(RECORD.read_text()))


def start(timeout: float = 60) -> dict:
    """dockerd up and answering: the environment that points the docker CLI (and so orch) at it."""
    for tool in ("dockerd", "iptables-save", "ip"):
        if not shutil.which(tool):
            raise RuntimeError(f"{tool} is missing: scripts/test installs docker.io, iptables and iproute2")
    config = docker_config()
    cleanup()
    STATE.mkdir(parents=True, exist_ok=True)
    RECORD.write_text(json.dumps(snapshot()))
    log = open(STATE / "dockerd.log", "ab")
    proc = subprocess.Popen(["dockerd", "--data-root", str(DATA), "--exec-root", str(EXEC_ROOT), "--pidfile", str(PIDFILE),
                             "-H", HOST, "--storage-driver", "overlay2"], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    env = {"DOCKER_HOST": HOST, "DOCKER_CONFIG": str(config)}
    deadline = time.monotonic() + timeout
    while subprocess.run(["docker", "info"], capture_output=True, env=os.environ | env).returncode != 0:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            cleanup()
            raise RuntimeError(f"dockerd did not start: see {STATE / 'dockerd.log'}")
        time.sleep(0.2)
    forget_stacks(os.environ | env)
    return env


def built(engine: str) -> Path:
    """Where scripts/engines put an engine (waiting for that engine's build, if scripts/test started it in the background)."""
    proc = subprocess.run([str(Path(__file__).resolve().parents[1] / "scripts" / "engines"), engine], capture_output=True, text=True,
                          env=os.environ | {"XDG_CACHE_HOME": str(CACHE_HOME)})
    if proc.returncode != 0:
        raise RuntimeError(f"scripts/engines failed: {proc.stderr.strip()[-2000:]}")
    return Path(dict(line.split(" ", 1) for line in proc.stdout.splitlines())[engine])


def docker_config() -> Path:
    """A docker CLI configuration of the suite's own, whose plugin folder holds the compose v2 scripts/engines built
    (so nothing is written where the machine's own docker looks)."""
    config = STATE / "docker-config"
    plugin = config / "cli-plugins" / "docker-compose"
    plugin.parent.mkdir(parents=True, exist_ok=True)
    target = built("compose")
    if not plugin.is_symlink() or Path(os.readlink(plugin)) != target:
        plugin.unlink(missing_ok=True)
        plugin.symlink_to(target)
    return config


def forget_stacks(env: dict) -> None:
    """Containers, networks and volumes a crashed run left in the cached data root would start again with the engine
    (restart: unless-stopped) and hold ports: each run starts from none. The images stay: they are the cache."""
    left = subprocess.run(["docker", "ps", "-aq"], capture_output=True, text=True, env=env).stdout.split()
    if left:
        subprocess.run(["docker", "rm", "-f", *left], capture_output=True, env=env)
    for kind in ("network", "volume"):
        subprocess.run(["docker", kind, "prune", "-f"], capture_output=True, env=env)


def stop() -> None:
    cleanup()


if __name__ == "__main__":
    if sys.argv[1:] == ["cleanup"]:
        import control_plane

        cleanup()
        control_plane.cleanup()
    else:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        sys.exit(2)
