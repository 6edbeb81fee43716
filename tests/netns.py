"""A network namespace of the test's own, with only loopback: what runs in it reaches nothing beyond the machine, and
addresses can be put on its loopback that Kubernetes accepts for endpoints (it refuses 127.0.0.0/8).

Entered by the calling thread (unshare), left by returning to the namespace it came from (setns): processes started in
between stay in it, and the suite's other tests, on this thread afterwards, are back on the machine's network.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
from contextlib import contextmanager

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)} (the test needs root, or CAP_SYS_ADMIN, for a network namespace)")


@contextmanager
def private_network(*addresses: str):
    """This thread in a new network namespace with loopback up and `addresses` (each a /32) on it; back out after."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
        try:
            subprocess.run(["ip", "link", "set", "lo", "up"], check=True, capture_output=True)
            for address in addresses:
                subprocess.run(["ip", "addr", "add", f"{address}/32", "dev", "lo"], check=True, capture_output=True)
            yield
        finally:
            _check(_libc.setns(home, CLONE_NEWNET), "setns back to the machine's network")
    finally:
        os.close(home)
