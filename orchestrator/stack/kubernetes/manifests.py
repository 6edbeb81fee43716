"""The Kubernetes manifests for a K8sPlan: plain YAML in a kustomize directory, so platform teams can patch them with overlays.

Rendering is pure (render() returns the files as text); write() is the only
part that touches disk. Names and labels follow the community charts
(otwld/ollama-helm, open-webui/helm-charts): app.kubernetes.io/name ollama and
open-webui, port 11434 named http, /root/.ollama's role played by a store
volume per replica.

Objects, and what each is for:
- StatefulSet ollama: the replicas; each has its own store (volumeClaimTemplate) and creates the model in it from
  the GGUF and Modelfile on the shared model volume (scripts/create-model.sh, its log is the container's), so a
  restarted or added replica serves the model with no human step.
- Services ollama (ClusterIP, balancing across Ready pods) and ollama-headless (each replica by name, for the monitor).
- NetworkPolicy ollama: only Open WebUI and the monitor reach 11434.
- PersistentVolumeClaim orch-models (ReadWriteMany) or a hostPath: the build, put there by orch k8s apply.
- Deployment, Service and PVC open-webui (one replica; see README for what more would need); an Ingress with --host.
- Deployment and Service orch-health: orch health --watch probing every replica, Prometheus metrics on :9101
  (a ServiceMonitor with --service-monitor).
- ScaledObject ollama, with --autoscale: KEDA scales the StatefulSet on the monitor's chat time to first token.
- Secret open-webui (secrets/open-webui.env, 0600, generated once) and ConfigMap ollama-scripts, from generators.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from orchestrator import __version__, paths
from orchestrator.errors import OrchError
from orchestrator.files import write_text
from orchestrator.stack.config import OLLAMA_IMAGE, PYTHON_IMAGE, WEBUI_IMAGE, write_env
from orchestrator.stack.kubernetes.plan import K8sPlan

OLLAMA_PORT, WEBUI_PORT, METRICS_PORT = 11434, 8080, 9101
UID = 10001  # above the host's own users (1000 is often the first login account)
MODELS_MOUNT = "/models"
SECRET_FILE = "secrets/open-webui.env"
BACKUP_SECRET_FILE = "secrets/backup.env"  # the backup Job's signing key and stack id, derived from the Open WebUI Secret
MODELFILE_KEY = "Modelfile"  # the build's Modelfile in ConfigMap orch-modelfile, with --model-url
PIP_SECRET_FILE = "secrets/pip.env"  # --pip-index-url, which may carry a token, as a Secret rather than in the Deployment
MONITOR_DEPENDENCIES = ("typer>=0.12", "rich>=13", "httpx>=0.27", "ollama>=0.4", "prometheus_client>=0.20", "psutil>=5.9")
REQUIREMENTS = "monitor-requirements.txt"  # MONITOR_DEPENDENCIES resolved and hashed by scripts/monitor-requirements
OLLAMA_SCRIPTS = ("entrypoint.sh", "create-model.sh", "fetch-model.py")
SOURCE_PACKAGES = ("", "cli", "ollama", "stack", "webui")  # what `orch health` and `orch backup` import (stack/: not its subpackages)


def labels(name: str, component: str) -> dict:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/instance": "orch", "app.kubernetes.io/component": component,
            "app.kubernetes.io/part-of": "orch", "app.kubernetes.io/managed-by": "orch", "app.kubernetes.io/version": __version__}


def selector(name: str) -> dict:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/instance": "orch"}


def meta(name: str, component: str, **extra) -> dict:
    return {"name": name, "labels": labels(name if component != "model" else "orch-models", component), **extra}


# every pod orch renders meets the restricted Pod Security Standard, and its namespace enforces it (the highest level,
# so applying it never lowers what a namespace enforced before)
POD_SECURITY = {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn", "audit")}
RESTRICTED = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}


def non_root(read_only: bool = True) -> dict:
    return RESTRICTED | {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "readOnlyRootFilesystem": read_only}


def pod_security() -> dict:
    """Every pod: orch's user, and its volumes' files given to orch's group (fsGroup), so that data an older orch wrote as
    root stays readable and writable (Kubernetes changes the group of a volume's files when it mounts it)."""
    return {"seccompProfile": {"type": "RuntimeDefault"}, "runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "fsGroup": UID}


def resources(cpu: str, memory: str, cpu_limit: str, memory_limit: str) -> dict:
    return {"requests": {"cpu": cpu, "memory": memory}, "limits": {"cpu": cpu_limit, "memory": memory_limit}}


def ingress_only(name: str, component: str, port: int) -> dict:
    """A NetworkPolicy that lets traffic reach the pods on their one serving port and nowhere else."""
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta(name, component),
            "spec": {"podSelector": {"matchLabels": selector(name)}, "policyTypes": ["Ingress"],
                     "ingress": [{"ports": [{"port": port, "protocol": "TCP"}]}]}}


def replica_hosts(plan: K8sPlan) -> list[str]:
    """What the monitor probes: each replica by name; autoscaled, the ones always there and the Service, whose probes land
    on whichever replicas run (a replica KEDA has not made yet must not page anyone)."""
    named = [f"http://ollama-{i}.ollama-headless.{plan.namespace}.svc.cluster.local:{OLLAMA_PORT}" for i in range(plan.replicas)]
    return named + ([ollama_url(plan)] if plan.autoscale else [])


def ollama_url(plan: K8sPlan) -> str:
    return f"http://ollama.{plan.namespace}.svc.cluster.local:{OLLAMA_PORT}"


def monitor_url(plan: K8sPlan) -> str:
    return f"http://orch-health.{plan.namespace}.svc.cluster.local:{METRICS_PORT}/metrics"


def autoscale_docs(plan: K8sPlan) -> list[dict]:
    """A KEDA ScaledObject for the Ollama StatefulSet: KEDA reads the monitor's orch_autoscale_ttft_p95_seconds and its
    HPA sets replicas to ceil(replicas x signal / target), at once on the way up, after the cool-down on the way down."""
    a = plan.autoscale
    return [{"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": meta("ollama", "ollama"),
             "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "ollama"},
                      "minReplicaCount": a.min_replicas, "maxReplicaCount": a.max_replicas, "pollingInterval": 10,
                      "advanced": {"horizontalPodAutoscalerConfig": {"behavior": {
                          "scaleUp": {"stabilizationWindowSeconds": 0, "policies": [{"type": "Pods", "value": 2, "periodSeconds": 15}]},
                          "scaleDown": {"stabilizationWindowSeconds": a.cooldown,
                                        "policies": [{"type": "Pods", "value": 1, "periodSeconds": 30}]}}}},
                      "triggers": [{"type": "metrics-api", "metricType": "Value", "metadata": {
                          "url": monitor_url(plan), "format": "prometheus", "valueLocation": "orch_autoscale_ttft_p95_seconds",
                          "targetValue": f"{a.ttft_target:g}"}}]}}]


def model_volume(plan: K8sPlan) -> dict:
    """Always the claim orch-models: with --model-volume hostpath it is bound to a hostPath PersistentVolume of its own,
    since PodSecurity (baseline and restricted alike) refuses a pod that mounts a hostPath itself."""
    return {"name": "models", "persistentVolumeClaim": {"claimName": "orch-models"}}


def host_path_volume(plan: K8sPlan) -> str:
    return f"orch-models-{plan.namespace}"


def model_claim(plan: K8sPlan) -> list[dict]:
    """The claim the model volume is mounted by, and with --model-volume hostpath the node directory's volume it binds to."""
    spec = {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": plan.model_volume_size}}}
    if plan.model_volume != "hostpath":
        claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta("orch-models", "model"),
                 "spec": spec | ({"storageClassName": plan.storage_class} if plan.storage_class else {})}
        return [claim]
    volume = {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": meta(host_path_volume(plan), "model"),
              "spec": {"capacity": {"storage": plan.model_volume_size}, "accessModes": ["ReadWriteMany", "ReadWriteOnce"],
                       "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                       "claimRef": {"namespace": plan.namespace, "name": "orch-models"},
                       "hostPath": {"path": plan.host_path, "type": "DirectoryOrCreate"}}}
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta("orch-models", "model"),
             "spec": spec | {"storageClassName": "", "volumeName": host_path_volume(plan)}}
    return [volume, claim]


def ollama_docs(plan: K8sPlan) -> list[dict]:
    m = plan.model
    env = [
        {"name": "OLLAMA_HOST", "value": f"0.0.0.0:{OLLAMA_PORT}"},
        {"name": "OLLAMA_MODELS", "value": "/data/models"},
        {"name": "HOME", "value": "/data"},  # the server keeps its key under $HOME/.ollama: on the store, not the read-only root
        {"name": "OLLAMA_KEEP_ALIVE", "value": "-1"},
        {"name": "OLLAMA_NO_CLOUD", "value": "1"},  # a private stack: no cloud models, no calls to ollama.com
        {"name": "MODEL_NAME", "value": m.name},
        {"name": "MODELFILE", "value": f"{MODELS_MOUNT}/{m.slug}/{m.modelfile}"},
        {"name": "MODEL_SHA256", "value": m.sha256},
    ]
    if plan.num_parallel:
        env.append({"name": "OLLAMA_NUM_PARALLEL", "value": str(plan.num_parallel)})
    show = {"exec": {"command": ["ollama", "show", m.name]}}
    container = {
        "name": "ollama", "image": OLLAMA_IMAGE, "imagePullPolicy": "IfNotPresent",
        "command": ["/bin/sh", "/orch/entrypoint.sh"], "env": env,
        "ports": [{"name": "http", "containerPort": OLLAMA_PORT, "protocol": "TCP"}],
        # creating the model copies gigabytes: up to 30 minutes before the first readiness check counts
        "startupProbe": show | {"periodSeconds": 10, "timeoutSeconds": 10, "failureThreshold": 180},
        "readinessProbe": show | {"periodSeconds": 10, "timeoutSeconds": 10, "failureThreshold": 3},
        "livenessProbe": {"httpGet": {"path": "/api/version", "port": "http"}, "periodSeconds": 20, "timeoutSeconds": 5,
                          "failureThreshold": 6},
        "volumeMounts": [{"name": "store", "mountPath": "/data"}, {"name": "models", "mountPath": MODELS_MOUNT, "readOnly": True},
                         {"name": "scripts", "mountPath": "/orch", "readOnly": True}, {"name": "tmp", "mountPath": "/tmp"}],
        # non-root with a read-only root: a file written through a path traversal cannot land where the server loads
        # code from (CVE-2026-103663 ran as root on restart in the default image)
        "securityContext": non_root(),
    }
    container["resources"] = plan.ollama_resources
    if plan.gpu:
        container["resources"]["limits"]["nvidia.com/gpu"] = plan.gpu_count
    grace = 30
    if plan.autoscale:  # Ollama closes every connection at SIGTERM: a replica KEDA removes first finishes what it serves
        container["lifecycle"] = {"preStop": {"exec": {"command": ["sleep", str(plan.autoscale.drain)]}}}
        grace += plan.autoscale.drain
    pod = {"securityContext": pod_security(), "automountServiceAccountToken": False, "containers": [container],
           "terminationGracePeriodSeconds": grace,
           "volumes": [model_volume(plan), {"name": "scripts", "configMap": {"name": "ollama-scripts", "defaultMode": 0o555}},
                       {"name": "tmp", "emptyDir": {}}]}
    if plan.model_url:
        pod["initContainers"] = [fetch_model(plan)]
        pod["volumes"].append({"name": "modelfile", "configMap": {"name": "orch-modelfile"}})
    if plan.node_selector:
        pod["nodeSelector"] = dict(plan.node_selector)
    if plan.tolerations:
        pod["tolerations"] = [dict(t) for t in plan.tolerations]
    statefulset = {
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": meta("ollama", "ollama"),
        "spec": {
            **({} if plan.autoscale else {"replicas": plan.replicas}),  # autoscaled: the count is KEDA's, a re-apply keeps it
            "serviceName": "ollama-headless", "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": selector("ollama")},
            "template": {"metadata": {"labels": labels("ollama", "ollama")}, "spec": pod},
            "volumeClaimTemplates": [{"metadata": {"name": "store", "labels": labels("ollama", "ollama")},
                                      "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": plan.store_size}},
                                               **({"storageClassName": plan.storage_class} if plan.storage_class else {})}}],
        },
    }
    port = {"name": "http", "port": OLLAMA_PORT, "targetPort": "http", "protocol": "TCP"}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": meta("ollama", "ollama"),
               "spec": {"type": "ClusterIP", "selector": selector("ollama"), "ports": [port]}}
    headless = {"apiVersion": "v1", "kind": "Service", "metadata": meta("ollama-headless", "ollama"),
                "spec": {"clusterIP": "None", "selector": selector("ollama"), "ports": [port], "publishNotReadyAddresses": True}}
    policy = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta("ollama", "ollama"),
              "spec": {"podSelector": {"matchLabels": selector("ollama")}, "policyTypes": ["Ingress"],
                       "ingress": [{"from": [{"podSelector": {"matchLabels": selector(client)}} for client in ("open-webui", "orch-health")],
                                    "ports": [{"port": OLLAMA_PORT, "protocol": "TCP"}]}]}}
    docs = [statefulset, service, headless, policy]
    docs[:0] = model_claim(plan)
    return docs


def fetch_model(plan: K8sPlan) -> dict:
    """With --model-url: each Ollama pod's init container puts the build on the model volume from that URL, checked by
    sha256 (scripts/fetch-model.py), so that gigabytes never stream through the API server as kubectl cp does."""
    m = plan.model
    env = {"MODEL_URL": plan.model_url, "MODEL_SHA256": m.sha256, "MODEL_SIZE": str(m.size), "GGUF": m.gguf,
           "MODELFILE": f"{MODELS_MOUNT}/{m.slug}/{m.modelfile}", "MODELFILE_SOURCE": f"/orch-model/{MODELFILE_KEY}"}
    return {"name": "fetch-model", "image": PYTHON_IMAGE, "imagePullPolicy": "IfNotPresent",
            "command": ["python", "/orch/fetch-model.py"], "env": [{"name": k, "value": v} for k, v in env.items()],
            "volumeMounts": [{"name": "models", "mountPath": MODELS_MOUNT}, {"name": "scripts", "mountPath": "/orch", "readOnly": True},
                             {"name": "modelfile", "mountPath": "/orch-model", "readOnly": True}, {"name": "tmp", "mountPath": "/tmp"}],
            "securityContext": non_root(), "resources": resources("100m", "128Mi", "1", "512Mi")}


def webui_docs(plan: K8sPlan) -> list[dict]:
    from orchestrator.stack import compose

    settings = compose.load_template()["services"]["open-webui"]["environment"]  # the one place Open WebUI's settings live
    settings |= {"OLLAMA_BASE_URL": ollama_url(plan),
                 "DEFAULT_MODELS": plan.model.name, "DATA_DIR": "/app/backend/data"}
    env = [{"name": k, "value": str(v)} for k, v in settings.items()]
    health = {"httpGet": {"path": "/health", "port": "http"}}
    container = {
        "name": "open-webui", "image": WEBUI_IMAGE, "imagePullPolicy": "IfNotPresent", "env": env,
        "envFrom": [{"secretRef": {"name": "open-webui"}}],  # WEBUI_SECRET_KEY and the admin account
        "ports": [{"name": "http", "containerPort": WEBUI_PORT, "protocol": "TCP"}],
        "startupProbe": health | {"periodSeconds": 10, "failureThreshold": 60},
        "readinessProbe": health | {"periodSeconds": 10, "failureThreshold": 3},
        "livenessProbe": health | {"periodSeconds": 20, "failureThreshold": 6},
        "volumeMounts": [{"name": "data", "mountPath": "/app/backend/data"}],
        # orch's user, not the image's root: its data is on the volume (fsGroup), its secret key comes from the Secret;
        # copying its static files into its own tree at start may log permission errors, harmlessly
        "securityContext": non_root(read_only=False),
        "resources": resources("500m", "1Gi", "2", "4Gi"),  # its embedding model and the chat history in SQLite
    }
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta("open-webui", "open-webui"),
        "spec": {"replicas": 1, "strategy": {"type": "Recreate"}, "selector": {"matchLabels": selector("open-webui")},
                 "template": {"metadata": {"labels": labels("open-webui", "open-webui")},
                              "spec": {"securityContext": pod_security(), "automountServiceAccountToken": False,
                                       "containers": [container],
                                       "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "open-webui"}}]}}},
    }
    pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta("open-webui", "open-webui"),
           "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "5Gi"}},
                    **({"storageClassName": plan.storage_class} if plan.storage_class else {})}}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": meta("open-webui", "open-webui"),
               "spec": {"type": "ClusterIP", "selector": selector("open-webui"),
                        "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]}}
    docs = [pvc, deployment, service, ingress_only("open-webui", "open-webui", WEBUI_PORT)]
    if plan.host:
        ingress = {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": meta("open-webui", "open-webui"),
                   "spec": {"rules": [{"host": plan.host, "http": {"paths": [{"path": "/", "pathType": "Prefix",
                                       "backend": {"service": {"name": "open-webui", "port": {"name": "http"}}}}]}}]}}
        if plan.tls_secret:
            ingress["spec"]["tls"] = [{"hosts": [plan.host], "secretName": plan.tls_secret}]
        docs.append(ingress)
    return docs


def orch_pod_parts(plan: K8sPlan, args: list[str]) -> tuple[dict, list[dict], list[dict]]:
    """How a pod runs `orch ARGS`: (its container's image, command and env; the pod's volumes; its init containers).

    With --monitor-image, that image's orch; else orch's own modules from a
    ConfigMap in the pinned Python image, and its few dependencies installed
    from PyPI (or $PIP_INDEX_URL) once per start, every wheel pinned by sha256.
    """
    volumes, mounts = [{"name": "tmp", "emptyDir": {}}], [{"name": "tmp", "mountPath": "/tmp"}]
    if plan.monitor_image:
        return ({"image": plan.monitor_image, "command": ["orch", *args], "env": [{"name": "HOME", "value": "/tmp"}],
                 "volumeMounts": mounts}, volumes, [])
    env = [{"name": "HOME", "value": "/tmp"}, {"name": "PYTHONPATH", "value": "/src:/deps"}]
    items = [{"key": key, "path": path} for key, path in source_files()]
    volumes += [{"name": "src", "configMap": {"name": "orch-source", "items": items}}, {"name": "deps", "emptyDir": {}}]
    mounts += [{"name": "src", "mountPath": "/src", "readOnly": True}, {"name": "deps", "mountPath": "/deps", "readOnly": True}]
    pip_env = [{"name": "HOME", "value": "/tmp"}, {"name": "PIP_DISABLE_PIP_VERSION_CHECK", "value": "1"}]
    if plan.pip_index_url:
        pip_env.append({"name": "PIP_INDEX_URL", "valueFrom": {"secretKeyRef": {"name": "orch-pip", "key": "PIP_INDEX_URL"}}})
    # every wheel pinned by sha256 (k8s/monitor-requirements.txt): a mirror cannot hand the pod other code
    volumes.append({"name": "requirements", "configMap": {"name": "orch-monitor-requirements"}})
    init = [{"name": "install", "image": PYTHON_IMAGE, "imagePullPolicy": "IfNotPresent", "env": pip_env,
             "command": ["python", "-m", "pip", "install", "--no-cache-dir", "--require-hashes", "--no-deps", "--only-binary=:all:",
                         "--target", "/deps", "-r", f"/requirements/{REQUIREMENTS}"],
             "volumeMounts": [{"name": "deps", "mountPath": "/deps"}, {"name": "tmp", "mountPath": "/tmp"},
                              {"name": "requirements", "mountPath": "/requirements", "readOnly": True}],
             "securityContext": non_root(), "resources": resources("100m", "256Mi", "1", "512Mi")}]
    return {"image": PYTHON_IMAGE, "command": ["python", "-m", "orchestrator", *args], "env": env, "volumeMounts": mounts}, volumes, init


def monitor_docs(plan: K8sPlan) -> list[dict]:
    args = ["health", "--watch", "--model", plan.model.name, "--interval", "10" if plan.autoscale else "30", "--failures", "3",
            "--metrics-port", str(METRICS_PORT), "--metrics-bind", "0.0.0.0", "--json"]
    if plan.autoscale:
        args += ["--load-window", str(plan.autoscale.window)]
    for host in replica_hosts(plan):
        args += ["--host", host]
    runs, volumes, init = orch_pod_parts(plan, args)
    image, command, env, mounts = runs["image"], runs["command"], runs["env"], runs["volumeMounts"]
    container = {"name": "orch-health", "image": image, "imagePullPolicy": "IfNotPresent", "command": command, "env": env,
                 "ports": [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
                 "readinessProbe": {"httpGet": {"path": "/metrics", "port": "metrics"}, "periodSeconds": 15},
                 "livenessProbe": {"httpGet": {"path": "/metrics", "port": "metrics"}, "periodSeconds": 30, "failureThreshold": 4},
                 "volumeMounts": mounts, "securityContext": non_root(), "resources": resources("50m", "128Mi", "500m", "256Mi")}
    pod = {"securityContext": pod_security(), "automountServiceAccountToken": False, "containers": [container], "volumes": volumes}
    if init:
        pod["initContainers"] = init
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta("orch-health", "monitor"),
                  "spec": {"replicas": 1, "selector": {"matchLabels": selector("orch-health")},
                           "template": {"metadata": {"labels": labels("orch-health", "monitor")}, "spec": pod}}}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": meta("orch-health", "monitor"),
               "spec": {"type": "ClusterIP", "selector": selector("orch-health"),
                        "ports": [{"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"}]}}
    docs = [deployment, service, ingress_only("orch-health", "monitor", METRICS_PORT)]
    if plan.service_monitor:
        docs.append({"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": meta("orch-health", "monitor"),
                     "spec": {"selector": {"matchLabels": selector("orch-health")}, "namespaceSelector": {"matchNames": [plan.namespace]},
                              "endpoints": [{"port": "metrics", "path": "/metrics", "interval": "30s"}]}})
    return docs


def backup_docs(plan: K8sPlan) -> list[dict]:
    """A CronJob running `orch backup --webui-data` on Open WebUI's volume, into a volume of its own (--backup-schedule).

    Open WebUI's claim is ReadWriteOnce, so the job runs on the node where Open
    WebUI runs (pod affinity). It runs as orch's user, as Open WebUI does, so
    it reads the files Open WebUI wrote and nothing more.
    """
    folder = "/backups"
    runs, volumes, init = orch_pod_parts(plan, ["backup", "--webui-data", "/data", "--out", folder, "--keep", str(plan.backup_keep)])
    # the backup key and the stack id (derived from WEBUI_SECRET_KEY, which signs sessions and stays out of this pod)
    container = {"name": "backup", "imagePullPolicy": "IfNotPresent", **runs, "envFrom": [{"secretRef": {"name": "orch-backup"}}],
                 "volumeMounts": runs["volumeMounts"] + [{"name": "data", "mountPath": "/data"},
                                                         {"name": "backups", "mountPath": folder}],
                 "securityContext": non_root(),
                 "resources": resources("100m", "256Mi", "1", "1Gi")}
    volumes = volumes + [{"name": "data", "persistentVolumeClaim": {"claimName": "open-webui"}},
                         {"name": "backups", "persistentVolumeClaim": {"claimName": "orch-backups"}}]
    same_node = {"labelSelector": {"matchLabels": selector("open-webui")}, "topologyKey": "kubernetes.io/hostname"}
    pod = {"restartPolicy": "OnFailure", "securityContext": pod_security(), "automountServiceAccountToken": False,
           "affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [same_node]}},
           "containers": [container], "volumes": volumes, **({"initContainers": init} if init else {})}
    cronjob = {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": meta("orch-backup", "backup"),
               "spec": {"schedule": plan.backup_schedule, "concurrencyPolicy": "Forbid", "successfulJobsHistoryLimit": 3,
                        "failedJobsHistoryLimit": 3,
                        "jobTemplate": {"spec": {"backoffLimit": 2, "template": {
                            "metadata": {"labels": labels("orch-backup", "backup")}, "spec": pod}}}}}
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta("orch-backups", "backup"),
             "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": plan.backup_size}},
                      **({"storageClassName": plan.storage_class} if plan.storage_class else {})}}
    # no ingress rule: nothing gets in (an empty list says the same, but the API server drops it, so that every
    # server-side apply would write the object again)
    nothing_in = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta("orch-backup", "backup"),
                  "spec": {"podSelector": {"matchLabels": selector("orch-backup")}, "policyTypes": ["Ingress"]}}
    return [claim, cronjob, nothing_in]


def loader_policy(plan: K8sPlan) -> dict:
    """The loader pod serves nothing: no traffic reaches it (kubectl exec and cp go through the API server)."""
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": meta("orch-model-loader", "model") | {"namespace": plan.namespace},
            "spec": {"podSelector": {"matchLabels": selector("orch-models")}, "policyTypes": ["Ingress"]}}


def loader_pod(plan: K8sPlan) -> dict:
    """The short-lived pod orch k8s apply copies the build through (kubectl cp needs a container with tar)."""
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta("orch-model-loader", "model") | {"namespace": plan.namespace},
            "spec": {"restartPolicy": "Never", "securityContext": pod_security(), **({"nodeSelector": dict(plan.node_selector)}
                                                                                      if plan.node_selector else {}),
                     "automountServiceAccountToken": False,
                     "containers": [{"name": "loader", "image": OLLAMA_IMAGE, "imagePullPolicy": "IfNotPresent",
                                     "command": ["sleep", "3600"], "securityContext": non_root(),
                                     "resources": resources("100m", "128Mi", "1", "512Mi"),
                                     "volumeMounts": [{"name": "models", "mountPath": MODELS_MOUNT}, {"name": "tmp", "mountPath": "/tmp"}]}],
                     "volumes": [model_volume(plan), {"name": "tmp", "emptyDir": {}}]}}


def source_files() -> list[tuple[str, str]]:
    """(ConfigMap key, path under /src) for the modules `orch health` needs."""
    root = Path(__file__).resolve().parents[2]
    out = []
    for package in SOURCE_PACKAGES:
        for f in sorted((root / package).glob("*.py")):
            rel = f.relative_to(root.parent).as_posix()
            out.append((rel.replace("/", "__"), rel))
    return out


def kustomization(plan: K8sPlan, resources: list[str]) -> dict:
    doc = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namespace": plan.namespace,
        "resources": resources,
        "configMapGenerator": [{"name": "ollama-scripts", "files": [f"scripts/{s}" for s in OLLAMA_SCRIPTS]}],
        "secretGenerator": [{"name": "open-webui", "envs": [SECRET_FILE]}],
    }
    if plan.model_url:
        doc["configMapGenerator"].append({"name": "orch-modelfile", "files": [f"{MODELFILE_KEY}=model/{plan.model.modelfile}"]})
    if plan.backup_schedule:
        doc["secretGenerator"].append({"name": "orch-backup", "envs": [BACKUP_SECRET_FILE]})
    if not plan.monitor_image:
        doc["configMapGenerator"].append({"name": "orch-source", "files": [f"monitor-source/{key}" for key, _ in source_files()]})
        doc["configMapGenerator"].append({"name": "orch-monitor-requirements", "files": [f"scripts/{REQUIREMENTS}"]})
        if plan.pip_index_url:
            doc["secretGenerator"].append({"name": "orch-pip", "envs": [PIP_SECRET_FILE]})
    return doc


def render(plan: K8sPlan) -> dict[str, list[dict] | dict]:
    """File name -> the documents it holds (YAML), for every manifest of the directory."""
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": plan.namespace, "labels": {
        "app.kubernetes.io/part-of": "orch", "app.kubernetes.io/managed-by": "orch", **POD_SECURITY}}}
    files = {"namespace.yaml": [namespace], "ollama.yaml": ollama_docs(plan), "open-webui.yaml": webui_docs(plan),
             "monitor.yaml": monitor_docs(plan)} | ({"backup.yaml": backup_docs(plan)} if plan.backup_schedule else {}) \
        | ({"autoscale.yaml": autoscale_docs(plan)} if plan.autoscale else {})
    return files | {"kustomization.yaml": kustomization(plan, list(files)), "loader/model-loader.yaml": [loader_policy(plan), loader_pod(plan)]}


def dump(docs) -> str:
    """Plain YAML: a part two objects share (a securityContext) is written out twice, never as an anchor and alias."""
    import yaml

    class Plain(yaml.SafeDumper):
        def ignore_aliases(self, data) -> bool:
            return True

    header = "# rendered by orch k8s render; patch it with a kustomize overlay rather than by hand\n"
    if isinstance(docs, dict):
        return header + yaml.dump(docs, Dumper=Plain, sort_keys=False)
    return header + "---\n".join(yaml.dump(d, Dumper=Plain, sort_keys=False) for d in docs)


def write(plan: K8sPlan) -> list[Path]:
    """The kustomize directory: manifests, scripts, the monitor's source, and the Secret's env file (0600, generated once)."""
    out = plan.out
    if out.exists() and not out.is_dir():
        raise OrchError(f"{out} is a file: pass --dir with a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / "source.json").is_file():
        raise OrchError(f"{out} holds files that orch k8s render did not write (no source.json): pass --dir with a new or empty "
                        "directory, and patch the manifests with an overlay of your own beside it")
    links = [p for p in (out, *out.rglob("*")) if p.is_symlink()] if out.is_dir() else []
    if links:
        raise OrchError(f"{links[0]} is a symlink: orch k8s render writes secrets there and follows no link; remove it")
    written = []
    secret = out / SECRET_FILE
    (out / "secrets").mkdir(parents=True, exist_ok=True)
    os.chmod(out / "secrets", 0o700)
    write_env(secret)  # the Open WebUI Secret's values: generated once, kept across renders, 0600
    written.append(secret)
    if plan.pip_index_url and not plan.monitor_image:
        write_text(out / PIP_SECRET_FILE, f"PIP_INDEX_URL={plan.pip_index_url}\n", mode=0o600)
        written.append(out / PIP_SECRET_FILE)
    if plan.backup_schedule:
        from orchestrator.stack.backup import Signer
        from orchestrator.stack.config import read_env

        write_text(out / BACKUP_SECRET_FILE, Signer.of_secret(read_env(secret)["WEBUI_SECRET_KEY"]).as_env(), mode=0o600)
        written.append(out / BACKUP_SECRET_FILE)
    else:
        (out / "backup.yaml").unlink(missing_ok=True)  # rendered before with --backup-schedule
        (out / BACKUP_SECRET_FILE).unlink(missing_ok=True)
    for name, docs in render(plan).items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        write_text(out / name, dump(docs))
        written.append(out / name)
    shutil.rmtree(out / "model", ignore_errors=True)
    if plan.model_url:
        (out / "model").mkdir()
        write_text(out / "model" / plan.model.modelfile, (plan.model.directory / plan.model.modelfile).read_text())
    write_text(out / "source.json", json.dumps({"build": str(plan.model.directory), "model": plan.model.name,
                                                "sha256": plan.model.sha256, "model_url": plan.model_url}, indent=2) + "\n")
    scripts = paths.resource_dir("k8s", "k8s_files")
    for script in (*OLLAMA_SCRIPTS, REQUIREMENTS):
        (out / "scripts").mkdir(exist_ok=True)
        write_text(out / "scripts" / script, (scripts / script).read_text())
        written.append(out / "scripts" / script)
    if not plan.monitor_image:
        root = Path(__file__).resolve().parents[3]
        (out / "monitor-source").mkdir(exist_ok=True)
        for key, rel in source_files():
            write_text(out / "monitor-source" / key, (root / rel).read_text())
    return written
