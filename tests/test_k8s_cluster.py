"""orch k8s against a real control plane (tests/control_plane.py): the API server's admission (PodSecurity, RBAC,
defaults), the scheduler, claim binding and the controllers are the real ones, on loopback; kwok's simulated node
(16 cores, 128 GiB, 1 GPU) runs no container, so what is tested here is the objects, their admission and their
scheduling. Every namespace already enforces PodSecurity `restricted` before orch sees it, as on a shared cluster."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from support import orch
from test_k8s import KUBECTL

NODE, CPU_NODE = "gpu-node", "cpu-node"
ON_THE_GPU_NODE = ["--gpu", "--node-selector", "accelerator=nvidia", "--toleration", "nvidia.com/gpu=present:NoSchedule"]


@pytest.fixture(scope="module")
def cluster():
    import control_plane

    plane = control_plane.start(str(KUBECTL))
    try:
        # a GPU box, tainted so that only what tolerates it runs there, and a plain node for Open WebUI and the monitor
        control_plane.admin_apply(str(KUBECTL), plane, [
            control_plane.node(NODE, labels={"accelerator": "nvidia"}, taints=[{"key": "nvidia.com/gpu", "value": "present",
                                                                               "effect": "NoSchedule"}]),
            control_plane.node(CPU_NODE, cpu="8", memory="32Gi", gpus=0)])
        yield plane
    finally:
        control_plane.stop()


def kubectl(cluster, *args: str, admin: bool = False, check: bool = True) -> subprocess.CompletedProcess:
    config = cluster.admin_kubeconfig if admin else cluster.kubeconfig
    proc = subprocess.run([str(KUBECTL), "--kubeconfig", str(config), *args], capture_output=True, text=True, timeout=120)
    assert not check or proc.returncode == 0, proc.stderr
    return proc


def get(cluster, namespace: str, kinds: str, *more: str) -> list[dict]:
    return json.loads(kubectl(cluster, "-n", namespace, "get", kinds, "-o", "json", *more).stdout)["items"]


def error_line(proc) -> str:
    """The one line that says why (the bars before it show how far it got)."""
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and proc.stderr.strip().splitlines()[-1] == errors[0], proc.stderr
    return errors[0]


def restricted_namespace(cluster, name: str) -> str:
    import control_plane

    control_plane.admin_apply(str(KUBECTL), cluster, [{"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": name, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}])
    return name


def k8s(cluster, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    env = os.environ | cluster.env() | {"ORCH_KUBECTL": str(KUBECTL)}
    return orch("k8s", *args, env=env, check=check, timeout=timeout)


def render(tiny_build: Path, out: Path, namespace: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return orch("k8s", "render", str(tiny_build), "--dir", str(out), "--namespace", namespace,
                "--model-url", "https://models.example.com/tiny.gguf", *args, check=check)


@pytest.fixture
def taken_down(cluster):
    """Stacks a test applied, taken down with their volumes even when it fails: the one GPU must be free for the next."""
    dirs: list[Path] = []
    yield dirs
    for out in dirs:
        k8s(cluster, "down", "--dir", str(out), "--volumes", check=False)


def state_of(cluster, namespace: str) -> dict[str, str]:
    """Every object of the stack that orch applied in the namespace, by kind/name: its generation where the API server
    keeps one (it moves only when the spec changes), else its resourceVersion. Left out: the backup CronJob's runs (its
    Jobs and their pods), which its schedule makes whenever the minute comes, and which move its status, not its spec.
    With the uid: one deleted and made again is not the same."""
    items = get(cluster, namespace, "all,pvc,networkpolicy,configmap,secret,cronjob", "-l", "app.kubernetes.io/part-of=orch")
    return {f"{i['kind']}/{i['metadata']['name']}":
            f"{i['metadata']['uid']} {i['metadata'].get('generation') or i['metadata']['resourceVersion']}"
            for i in items if not any(o["kind"] in ("CronJob", "Job") for o in i["metadata"].get("ownerReferences", []))}


def test_two_gpu_replicas_on_one_gpu_with_no_storage_class_fail_within_seconds_naming_both(cluster, tiny_build, tmp_path):
    namespace = restricted_namespace(cluster, "short")
    out = tmp_path / "k8s"
    render(tiny_build, out, namespace, "--replicas", "2", *ON_THE_GPU_NODE, "--backup-schedule", "*/1 * * * *")
    started = time.monotonic()
    proc = k8s(cluster, "apply", "--dir", str(out), check=False, timeout=180)
    assert time.monotonic() - started < 180
    assert proc.returncode == 1
    line = error_line(proc)
    assert "statefulset/ollama asks 2 replicas of 1 nvidia.com/gpu each" in line and f"largest node {NODE}: 1" in line, line
    assert "--replicas 1" in line
    assert "orch-models (ReadWriteMany, " in line and "no default StorageClass and no PersistentVolume" in line, line
    assert all(f"{claim} (ReadWriteOnce, " in line for claim in ("store-ollama-0", "store-ollama-1", "open-webui", "orch-backups"))
    assert "--storage-class" in line
    assert state_of(cluster, namespace) == {}, "nothing is applied when the cluster cannot run it"


@pytest.mark.parametrize("args, says", [
    (["--ollama-memory", "200Gi"], "statefulset/ollama asks 200Gi memory per pod, but the largest node (gpu-node) can allocate 128Gi"),
    (["--ollama-cpu", "24"], "statefulset/ollama asks 24 cpu per pod, but the largest node (gpu-node) can allocate 16"),
    (["--gpu-count", "2"], "statefulset/ollama asks 2 nvidia.com/gpu per pod, but the largest node (gpu-node) can allocate 1"),
])
def test_a_pod_no_node_can_hold_is_named_with_the_largest_node_before_anything_is_applied(cluster, tiny_build, tmp_path, args, says):
    namespace = restricted_namespace(cluster, "big")
    out = tmp_path / "k8s"
    render(tiny_build, out, namespace, *ON_THE_GPU_NODE, "--storage-class", "none-such", *args)
    proc = k8s(cluster, "apply", "--dir", str(out), check=False)
    assert proc.returncode == 1 and says in proc.stderr, proc.stderr
    assert "StorageClass 'none-such', which the cluster lacks" in proc.stderr
    assert state_of(cluster, namespace) == {}


def test_autoscaling_beyond_the_gpus_or_without_keda_is_refused_in_one_line_before_anything_is_applied(cluster, tiny_build, tmp_path):
    namespace = restricted_namespace(cluster, "scaled")
    out = tmp_path / "k8s"
    render(tiny_build, out, namespace, *ON_THE_GPU_NODE, "--autoscale", "--max-replicas", "3")
    proc = k8s(cluster, "apply", "--dir", str(out), check=False, timeout=180)
    assert proc.returncode == 1
    line = error_line(proc)
    assert "statefulset/ollama may scale to 3 replicas of 1 nvidia.com/gpu each" in line, line
    assert "render without --autoscale, or add GPU nodes" in line, line
    assert "KEDA is not installed in this cluster (no keda.sh API): helm install keda" in line, line
    assert state_of(cluster, namespace) == {}


def test_apply_runs_the_stack_admitted_scheduled_and_bound_and_down_removes_what_it_made(cluster, tiny_build, tmp_path, taken_down):
    import control_plane

    namespace = restricted_namespace(cluster, "chat")
    out = tmp_path / "k8s"
    taken_down.append(out)
    render(tiny_build, out, namespace, *ON_THE_GPU_NODE, "--backup-schedule", "*/1 * * * *")
    # a cluster with no provisioner: the volumes an administrator made (the models', Open WebUI's, the backups', one store)
    control_plane.admin_apply(str(KUBECTL), cluster, control_plane.volumes(4, prefix="chat"))

    started = time.monotonic()
    proc = k8s(cluster, "apply", "--dir", str(out), "--wait", "300")
    assert time.monotonic() - started < 300
    assert "ollama-0: ready" in proc.stdout, proc.stdout

    claims = get(cluster, namespace, "pvc")
    assert sorted(c["metadata"]["name"] for c in claims) == ["open-webui", "orch-backups", "orch-models", "store-ollama-0"]
    assert all(c["status"]["phase"] == "Bound" for c in claims)
    # the '*/1' CronJob's backup pods may already be there; they are checked below
    pods = [p for p in get(cluster, namespace, "pods") if "job-name" not in p["metadata"]["labels"]]
    assert {p["metadata"]["labels"]["app.kubernetes.io/name"] for p in pods} == {"ollama", "open-webui", "orch-health"}
    assert {p["metadata"]["labels"]["app.kubernetes.io/name"]: p["spec"]["nodeName"] for p in pods} == {
        "ollama": NODE, "open-webui": CPU_NODE, "orch-health": CPU_NODE}, "Ollama on the GPU box, tolerating its taint"
    ollama = next(p for p in pods if p["metadata"]["name"] == "ollama-0")
    assert ollama["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert [c["name"] for c in ollama["spec"]["initContainers"]] == ["fetch-model"]
    ns = json.loads(kubectl(cluster, "get", "namespace", namespace, "-o", "json").stdout)
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert {p["metadata"]["name"] for p in get(cluster, namespace, "networkpolicy")} == {
        "ollama", "open-webui", "orch-health", "orch-backup"}
    managers = {m["manager"] for m in json.loads(kubectl(cluster, "-n", namespace, "get", "statefulset", "ollama", "-o", "json",
                                                         "--show-managed-fields").stdout)["metadata"]["managedFields"]}
    assert "orch" in managers, "applied server-side, as the field manager orch"

    status = [p for p in json.loads(k8s(cluster, "status", "--dir", str(out), "--json").stdout)["pods"]
              if not p["name"].startswith("orch-backup-")]  # a backup Job's pod, if the minute came
    assert sorted(p["name"].rsplit("-", 2)[0] if p["name"] != "ollama-0" else p["name"] for p in status) == [
        "ollama-0", "open-webui", "orch-health"]
    assert all(p["state"] == "ready" for p in status)

    before = state_of(cluster, namespace)
    k8s(cluster, "apply", "--dir", str(out), "--wait", "120")
    assert state_of(cluster, namespace) == before, "a second apply changes nothing"

    deadline = time.monotonic() + 150  # '*/1 * * * *': the CronJob controller makes a Job at the next minute
    while not (jobs := get(cluster, namespace, "jobs")) and time.monotonic() < deadline:
        time.sleep(2)
    assert jobs and jobs[0]["metadata"]["ownerReferences"][0]["name"] == "orch-backup"
    job_pod = get(cluster, namespace, "pods", "-l", f"job-name={jobs[0]['metadata']['name']}")
    assert job_pod and job_pod[0]["spec"]["nodeName"] == CPU_NODE, "beside Open WebUI, whose volume it backs up"

    removed = k8s(cluster, "down", "--dir", str(out))
    assert "removed" in removed.stdout
    left = get(cluster, namespace, "all,networkpolicy,configmap,secret,cronjob,jobs", "-l", "app.kubernetes.io/part-of=orch")
    assert left == []
    assert not get(cluster, namespace, "jobs"), "the CronJob's Jobs go with it"
    assert sorted(c["metadata"]["name"] for c in get(cluster, namespace, "pvc")) == [
        "open-webui", "orch-backups", "orch-models", "store-ollama-0"], "chats and models stay without --volumes"
    kubectl(cluster, "get", "namespace", namespace)
    k8s(cluster, "down", "--dir", str(out), "--volumes")
    assert get(cluster, namespace, "pvc") == []


@pytest.mark.parametrize("namespace_exists", [True, False], ids=["before apply, in the existing namespace", "after apply, in a new one"])
def test_pods_the_namespace_refuses_end_apply_with_podsecuritys_reason(cluster, tiny_build, tmp_path, namespace_exists, taken_down):
    """An overlay that lets Open WebUI run as root: PodSecurity `restricted` refuses its pods, and orch says so."""
    namespace = restricted_namespace(cluster, "refused") if namespace_exists else "refused-new"
    out = tmp_path / "k8s"
    taken_down.append(out)
    render(tiny_build, out, namespace, *ON_THE_GPU_NODE, "--storage-class", "standard")
    import control_plane

    control_plane.admin_apply(str(KUBECTL), cluster, [{"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                                                       "metadata": {"name": "standard"}, "provisioner": "kubernetes.io/no-provisioner",
                                                       "volumeBindingMode": "Immediate"}])
    control_plane.admin_apply(str(KUBECTL), cluster, control_plane.volumes(4, prefix=namespace, storage_class="standard"))
    docs = list(yaml.safe_load_all((out / "open-webui.yaml").read_text()))
    webui = next(d for d in docs if d and d["kind"] == "Deployment")
    webui["spec"]["template"]["spec"]["securityContext"] |= {"runAsNonRoot": False, "runAsUser": 0}
    webui["spec"]["template"]["spec"]["containers"][0]["securityContext"] |= {"runAsNonRoot": False, "runAsUser": 0}
    (out / "open-webui.yaml").write_text("---\n".join(yaml.safe_dump(d) for d in docs if d))

    started = time.monotonic()
    proc = k8s(cluster, "apply", "--dir", str(out), "--wait", "300", check=False)
    assert time.monotonic() - started < 120
    assert proc.returncode == 1
    line = error_line(proc)
    assert "violates PodSecurity" in line and "restricted" in line and "runAsNonRoot" in line, line
    if namespace_exists:
        assert "nothing was applied" in line and state_of(cluster, namespace) == {}
    else:
        assert "deployment/open-webui cannot make its pods" in line, line
