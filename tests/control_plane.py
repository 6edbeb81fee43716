"""A real Kubernetes control plane for the suite, on loopback: Debian's etcd, kube-apiserver, kube-controller-manager and
kube-scheduler built from k8s.io/kubernetes (scripts/engines), and kwok simulating the nodes and their pods.

Admission (PodSecurity included), defaulting, RBAC, scheduling, claim binding and the CronJob, Job, StatefulSet and
Deployment controllers are the real ones; nothing runs inside the pods. It changes nothing in the kernel: no kubelet,
no kube-proxy. Every process is stopped by its own pid; a run that crashed leaves their record, and `cleanup` stops them
(`python tests/engines.py cleanup` does, for every engine of the suite).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from engines import CACHE_HOME

CACHE = CACHE_HOME / "orch"
RECORD = CACHE / "test-kube" / "pids.json"
ADMIN_TOKEN, USER_TOKEN = "orch-test-admin-token", "orch-test-platform-token"
USER = "platform"  # the user orch runs as: RBAC grants it cluster-admin by a binding (not system:masters, which skips RBAC)


@dataclass(frozen=True)
class ControlPlane:
    server: str
    kubeconfig: Path  # the platform user's, for orch and kubectl
    admin_kubeconfig: Path  # system:masters, for the suite's own set-up (nodes, volumes)
    work: Path

    def env(self) -> dict:
        return {"KUBECONFIG": str(self.kubeconfig)}


def binaries() -> tuple[Path, Path]:
    """(the control plane's directory, kwok's) as scripts/engines built them."""
    from engines import built

    return built("kubernetes"), built("kwok")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kubeconfig(path: Path, server: str, user: str, token: str) -> Path:
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "orch-test",
        "clusters": [{"name": "orch-test", "cluster": {"server": server, "insecure-skip-tls-verify": True}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "orch-test", "context": {"cluster": "orch-test", "user": user}}]}))
    path.chmod(0o600)
    return path


def _wait(what: str, ready, procs: list, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start: see {log}")
        time.sleep(0.2)


def certificate(work: Path, name: str, cn: str, *, ca: str | None = None, sans: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """(NAME.crt, NAME.key) made with openssl: a CA when `ca` is None, else a leaf signed by the CA named `ca` (serving
    and client use both), with `sans` as its IP and DNS names."""
    crt, key = work / f"{name}.crt", work / f"{name}.key"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key]
    if ca is None:
        subprocess.run(["openssl", "req", "-x509", *ec, "-out", crt, "-days", "2", "-subj", f"/CN={cn}"], check=True,
                       capture_output=True)
        return crt, key
    ext = work / f"{name}.ext"
    alt = ",".join(f"IP:{s}" if s.replace(".", "").isdigit() else f"DNS:{s}" for s in sans)
    ext.write_text("extendedKeyUsage=serverAuth,clientAuth\n" + (f"subjectAltName={alt}\n" if alt else ""))
    subprocess.run(["openssl", "req", *ec, "-out", work / f"{name}.csr", "-subj", f"/CN={cn}"], check=True, capture_output=True)
    subprocess.run(["openssl", "x509", "-req", "-in", work / f"{name}.csr", "-CA", work / f"{ca}.crt", "-CAkey", work / f"{ca}.key",
                    "-CAcreateserial", "-out", crt, "-days", "2", "-extfile", ext], check=True, capture_output=True)
    return crt, key


def start(kubectl: str, timeout: float = 120, *, aggregation: bool = False) -> ControlPlane:
    """etcd, the API server, the controllers, the scheduler and kwok, each on its own loopback port, answering.

    With `aggregation`, the API server also fronts extension API servers (KEDA's external metrics): a front-proxy CA and
    client certificate, and routing to an APIService's endpoints directly, as there is no kube-proxy."""
    if not shutil.which("etcd"):
        raise RuntimeError("etcd is missing: scripts/test installs Debian's etcd-server")
    cleanup()
    kube, kwok = binaries()
    work = Path(tempfile.mkdtemp(prefix="orch-kube-"))
    logs = work / "logs"
    logs.mkdir()
    procs: list[subprocess.Popen] = []

    def launch(name: str, *argv) -> subprocess.Popen:
        out = open(logs / f"{name}.log", "ab")
        proc = subprocess.Popen([str(a) for a in argv], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        procs.append(proc)
        RECORD.parent.mkdir(parents=True, exist_ok=True)
        RECORD.write_text(json.dumps({"work": str(work), "pids": [[p.pid, p.args[0]] for p in procs]}))
        return proc

    try:
        etcd_port, peer_port, api_port = _free_port(), _free_port(), _free_port()
        etcd = f"http://127.0.0.1:{etcd_port}"
        launch("etcd", "etcd", "--data-dir", work / "etcd", "--listen-client-urls", etcd, "--advertise-client-urls", etcd,
               "--listen-peer-urls", f"http://127.0.0.1:{peer_port}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
               "--initial-cluster", f"default=http://127.0.0.1:{peer_port}", "--log-level", "warn")
        subprocess.run(["openssl", "genrsa", "-out", work / "sa.key", "2048"], check=True, capture_output=True)
        subprocess.run(["openssl", "rsa", "-in", work / "sa.key", "-pubout", "-out", work / "sa.pub"], check=True, capture_output=True)
        (work / "tokens.csv").write_text(f'{ADMIN_TOKEN},admin,1,"system:masters"\n{USER_TOKEN},{USER},2\n')
        server = f"https://127.0.0.1:{api_port}"
        launch("kube-apiserver", kube / "kube-apiserver", "--etcd-servers", etcd, "--bind-address=127.0.0.1",
               "--advertise-address=127.0.0.1", f"--secure-port={api_port}", "--cert-dir", work / "certs",
               "--token-auth-file", work / "tokens.csv", "--authorization-mode=Node,RBAC",
               "--service-account-issuer=https://kubernetes.default.svc", "--service-account-key-file", work / "sa.pub",
               "--service-account-signing-key-file", work / "sa.key", "--service-cluster-ip-range=10.96.0.0/16",
               "--endpoint-reconciler-type=none", *(_aggregation_flags(work) if aggregation else ()))
        admin = _kubeconfig(work / "admin.kubeconfig", server, "admin", ADMIN_TOKEN)
        user = _kubeconfig(work / "user.kubeconfig", server, USER, USER_TOKEN)

        def answers() -> bool:
            return subprocess.run([kubectl, "--kubeconfig", admin, "get", "--raw", "/readyz"], capture_output=True).returncode == 0
        _wait("kube-apiserver", answers, procs, timeout, logs / "kube-apiserver.log")
        common = ["--kubeconfig", admin, "--authentication-kubeconfig", admin, "--authorization-kubeconfig", admin,
                  "--leader-elect=false", "--bind-address=127.0.0.1"]
        launch("kube-controller-manager", kube / "kube-controller-manager", *common, f"--secure-port={_free_port()}",
               "--horizontal-pod-autoscaler-sync-period=5s",  # 15 s by default: the HPA KEDA makes acts sooner
               "--service-account-private-key-file", work / "sa.key", "--root-ca-file", work / "certs" / "apiserver.crt",
               "--use-service-account-credentials=false")
        launch("kube-scheduler", kube / "kube-scheduler", *common, f"--secure-port={_free_port()}")
        stages = sorted((kwok / "stages").glob("*.yaml"))
        launch("kwok", kwok / "kwok", "--kubeconfig", admin, "--manage-all-nodes=false",
               "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake", "--cidr=10.0.0.1/24",
               "--node-ip=10.0.0.1", f"--node-port={_free_port()}", f"--server-address=127.0.0.1:{_free_port()}",
               *[a for s in stages for a in ("-c", s)])
        plane = ControlPlane(server, user, admin, work)
        binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "platform-admin"},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
                   "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": USER}]}
        admin_apply(kubectl, plane, [binding])

        def default_account() -> bool:  # the controllers run: the service account controller made default's account
            return subprocess.run([kubectl, "--kubeconfig", admin, "get", "serviceaccount", "default", "-n", "default"],
                                  capture_output=True).returncode == 0
        _wait("kube-controller-manager", default_account, procs, timeout, logs / "kube-controller-manager.log")
        return plane
    except BaseException:
        cleanup()
        raise


def launch(plane: ControlPlane, name: str, *argv, env: dict | None = None) -> subprocess.Popen:
    """Another process beside the control plane (KEDA), logged in its work directory and stopped with it by `cleanup`."""
    out = open(plane.work / "logs" / f"{name}.log", "ab")
    proc = subprocess.Popen([str(a) for a in argv], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, env=env)
    record = json.loads(RECORD.read_text())
    record["pids"].append([proc.pid, str(argv[0])])
    RECORD.write_text(json.dumps(record))
    return proc


def _aggregation_flags(work: Path) -> list:
    certificate(work, "front-proxy-ca", "front-proxy-ca")
    crt, key = certificate(work, "front-proxy-client", "front-proxy-client", ca="front-proxy-ca")
    return ["--requestheader-client-ca-file", work / "front-proxy-ca.crt", "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User", "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-", "--proxy-client-cert-file", crt, "--proxy-client-key-file", key,
            "--enable-aggregator-routing=true"]


def admin_apply(kubectl: str, plane: ControlPlane, docs: list[dict]) -> None:
    """The suite's own set-up, as the cluster's administrator (system:masters)."""
    subprocess.run([kubectl, "--kubeconfig", str(plane.admin_kubeconfig), "apply", "-f", "-"],
                   input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}), text=True, check=True, capture_output=True)


def node(name: str, *, cpu: str = "16", memory: str = "128Gi", gpus: int = 1, labels: dict | None = None,
             taints: list | None = None) -> dict:
    """A Node kwok keeps Ready, of the shape asked (by default a GPU box: 16 cores, 128 GiB, 1 GPU)."""
    capacity = {"cpu": cpu, "memory": memory, "pods": "110", **({"nvidia.com/gpu": str(gpus)} if gpus else {})}
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "annotations": {"kwok.x-k8s.io/node": "fake"},
                         "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "type": "kwok", **(labels or {})}},
            "spec": {**({"taints": taints} if taints else {})},
            "status": {"capacity": capacity, "allocatable": capacity}}


def volumes(count: int, *, size: str = "500Gi", prefix: str = "pv", storage_class: str = "") -> list[dict]:
    """PersistentVolumes an administrator made, for claims of that class (none: claims with no class) to bind to."""
    return [{"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"{prefix}-{i}"},
             "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce", "ReadWriteMany"],
                      **({"storageClassName": storage_class} if storage_class else {}),
                      "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": f"/srv/{prefix}-{i}"}}}
            for i in range(count)]


def stop() -> None:
    cleanup()


def cleanup() -> None:
    """Stop every process the record names (when it is still the program started), then remove the work directory."""
    if not RECORD.is_file():
        return
    record = json.loads(RECORD.read_text())
    pids = []
    for pid, program in reversed(record["pids"]):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode() != program:
                continue
            os.kill(pid, signal.SIGTERM)
            pids.append(pid)
        except (OSError, UnicodeDecodeError):
            continue
    from engines import alive

    deadline = time.monotonic() + 5
    for pid in pids:
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if alive(pid):
            os.kill(pid, signal.SIGKILL)  # the API server may not stop on SIGTERM within seconds
    shutil.rmtree(record["work"], ignore_errors=True)
    RECORD.unlink(missing_ok=True)

