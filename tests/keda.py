"""KEDA's operator and metrics adapter (built by scripts/engines) run against the suite's real control plane, as a
platform team installs them, minus the pods: both run as processes beside the API server.

The HPA that KEDA makes reads external.metrics.k8s.io through the API server's aggregation layer. The API server
reaches the adapter through an APIService, a Service and an EndpointSlice, and EndpointSlices refuse loopback
addresses: so everything runs in a network namespace of its own (tests/netns.py) where `address` sits on loopback.
"""

from __future__ import annotations

import os
import subprocess
import time
import control_plane
from control_plane import ControlPlane, admin_apply, certificate, launch

NAMESPACE = "keda"
AUTHORITY = "keda-operator.keda.svc.cluster.local"
ADAPTER_PORT = 6443


def start(plane: ControlPlane, kubectl: str, address: str, timeout: float = 120) -> None:
    """The CRDs, the operator, the adapter and the APIService, until external metrics answer through the API server."""
    from engines import built

    keda = built("keda")
    admin = str(plane.admin_kubeconfig)
    subprocess.run([kubectl, "--kubeconfig", admin, "apply", "--server-side", "-f", str(keda / "crds")], check=True,
                   capture_output=True, timeout=120)
    certs = plane.work / "keda-certs"
    certs.mkdir()
    certificate(certs, "ca", "keda-ca")
    certificate(certs, "tls", "keda-operator", ca="ca", sans=(AUTHORITY, "keda-operator.keda.svc", "127.0.0.1", address))
    env = os.environ | {"WATCH_NAMESPACE": "", "POD_NAMESPACE": NAMESPACE, "KEDA_CLUSTER_OBJECT_NAMESPACE": NAMESPACE,
                        "OPERATOR_NAME": "keda-operator"}
    admin_apply(kubectl, plane, [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}])
    port = control_plane._free_port
    operator = launch(plane, "keda-operator", keda / "keda", "--kubeconfig", admin, "--cert-dir", certs,
                      "--enable-webhook-patching=false", "--enable-apiservice-patching=false",
                      f"--metrics-bind-address=127.0.0.1:{port()}", f"--health-probe-bind-address=127.0.0.1:{port()}",
                      "--metrics-service-bind-address=127.0.0.1:9666", "--zap-log-level=info", env=env)
    adapter = launch(plane, "keda-adapter", keda / "keda-adapter", "--kubeconfig", admin, "--lister-kubeconfig", admin,
                     "--authentication-kubeconfig", admin, "--authorization-kubeconfig", admin, "--cert-dir", certs,
                     "--tls-cert-file", certs / "tls.crt", "--tls-private-key-file", certs / "tls.key", f"--bind-address={address}",
                     f"--secure-port={ADAPTER_PORT}", "--requestheader-client-ca-file", plane.work / "front-proxy-ca.crt",
                     "--metrics-service-address=127.0.0.1:9666", f"--metrics-service-grpc-authority={AUTHORITY}", env=env)
    service = "keda-metrics-apiserver"
    admin_apply(kubectl, plane, [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": service, "namespace": NAMESPACE},
         "spec": {"ports": [{"name": "https", "port": 443, "targetPort": ADAPTER_PORT, "protocol": "TCP"}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": service, "namespace": NAMESPACE, "labels": {"kubernetes.io/service-name": service}},
         "addressType": "IPv4", "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
         "ports": [{"name": "https", "port": ADAPTER_PORT, "protocol": "TCP"}]},
        {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService", "metadata": {"name": "v1beta1.external.metrics.k8s.io"},
         "spec": {"service": {"name": service, "namespace": NAMESPACE, "port": 443}, "group": "external.metrics.k8s.io",
                  "version": "v1beta1", "insecureSkipTLSVerify": True, "groupPriorityMinimum": 100, "versionPriority": 100}}])
    deadline = time.monotonic() + timeout
    while subprocess.run([kubectl, "--kubeconfig", admin, "get", "--raw", "/apis/external.metrics.k8s.io/v1beta1"],
                         capture_output=True).returncode != 0:
        if time.monotonic() > deadline:
            logs = plane.work / "logs"
            tail = {p.name: p.read_text()[-1500:] for p in logs.glob("keda-*.log")}
            raise RuntimeError(f"KEDA's external metrics did not answer through the API server: {tail}")
        time.sleep(0.5)


def logs(plane: ControlPlane) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted((plane.work / "logs").glob("keda-*.log")))

