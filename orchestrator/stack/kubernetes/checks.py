"""What the cluster itself says before and after `orch k8s apply`: pure readings of the objects kubectl returns.

Before applying: do the nodes have the GPUs, CPU and memory the Ollama replicas ask; does every claim have a
StorageClass or a volume to bind. After: what stands in the way (a claim that cannot bind, a pod the scheduler cannot
place, a pod PodSecurity refused, an image that cannot be pulled), each in one line with its fix, and how far it got.
Every function takes the JSON kubectl prints and returns values; the runtime does the asking.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

GPU = "nvidia.com/gpu"
DEFAULT_CLASS = "storageclass.kubernetes.io/is-default-class"
_UNITS = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def quantity(text) -> float:
    """A Kubernetes quantity ("500m", "128Gi", "1e3", 4) as a number."""
    m = re.fullmatch(r"([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)", str(text).strip())
    if not m or m.group(2) not in _UNITS:
        raise ValueError(f"not a Kubernetes quantity: {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _show(resource: str, amount: float) -> str:
    if resource == "memory":
        return f"{amount / 2**30:g}Gi"
    return f"{amount:g}"


@dataclass(frozen=True)
class PodNeed:
    """What one pod of a workload asks of a node."""

    workload: str  # e.g. statefulset/ollama
    replicas: int
    requests: dict  # resource -> amount (limits stand in where a request is missing, as the API server defaults them)
    node_selector: dict
    tolerations: tuple
    autoscaled: bool = False  # replicas is the most a ScaledObject (KEDA) may make


def pod_template(doc: dict) -> dict | None:
    kind = doc.get("kind")
    if kind in ("Deployment", "StatefulSet", "Job"):
        return doc["spec"]["template"]
    if kind == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]
    if kind == "Pod":
        return doc
    return None


def most_replicas(docs: list[dict]) -> dict[tuple[str, str], int]:
    """(kind, name) -> the most replicas a ScaledObject (KEDA) may give that workload."""
    return {(d["spec"]["scaleTargetRef"].get("kind", "Deployment"), d["spec"]["scaleTargetRef"]["name"]): d["spec"].get("maxReplicaCount", 100)
            for d in docs if d.get("kind") == "ScaledObject"}


def needs(docs: list[dict]) -> list[PodNeed]:
    """Each workload's pods; an autoscaled one at its maximum, the most the cluster may be asked to hold."""
    scaled = most_replicas(docs)
    out = []
    for doc in docs:
        template = pod_template(doc)
        if template is None:
            continue
        spec = template["spec"]
        asked: dict[str, float] = {}
        for c in spec.get("containers", []):
            res = c.get("resources", {})
            for name, value in (res.get("limits", {}) | res.get("requests", {})).items():
                asked[name] = asked.get(name, 0) + quantity(value)
        replicas = doc["spec"].get("replicas", 1) if doc["kind"] in ("Deployment", "StatefulSet") else 1
        most = scaled.get((doc["kind"], doc["metadata"]["name"]))
        out.append(PodNeed(f"{doc['kind'].lower()}/{doc['metadata']['name']}", most or replicas, asked, spec.get("nodeSelector", {}),
                           tuple(spec.get("tolerations", [])), autoscaled=most is not None))
    return out


def _tolerates(tolerations: tuple, taint: dict) -> bool:
    for t in tolerations:
        if t.get("effect") and t["effect"] != taint.get("effect"):
            continue
        if t.get("operator") == "Exists" and (not t.get("key") or t["key"] == taint.get("key")):
            return True
        if t.get("key") == taint.get("key") and t.get("value", "") == taint.get("value", ""):
            return True
    return False


def _fits_on(need: PodNeed, node: dict) -> bool:
    labels = node["metadata"].get("labels", {})
    if any(labels.get(k) != v for k, v in need.node_selector.items()):
        return False
    hard = [t for t in node.get("spec", {}).get("taints", []) if t.get("effect") in ("NoSchedule", "NoExecute")]
    return not node.get("spec", {}).get("unschedulable") and all(_tolerates(need.tolerations, t) for t in hard)


def capacity_problems(docs: list[dict], nodes: list[dict]) -> list[str]:
    """Requests no node can meet, and GPUs asked across replicas beyond what the nodes can allocate together."""
    problems = []
    for need in needs(docs):
        eligible = [n for n in nodes if _fits_on(need, n)]
        if not eligible:
            where = f" with labels {need.node_selector}" if need.node_selector else ""
            problems.append(f"{need.workload}: no schedulable node{where} that its tolerations allow "
                            "(kubectl get nodes --show-labels): fix --node-selector/--toleration in orch k8s render")
            continue
        for resource, amount in sorted(need.requests.items()):
            if resource not in ("cpu", "memory", GPU) or amount <= 0:
                continue
            room = [(quantity(n["status"].get("allocatable", {}).get(resource, 0)), n["metadata"]["name"]) for n in eligible]
            largest, largest_name = max(room)
            if amount > largest:
                option = {"cpu": "--ollama-cpu", "memory": "--ollama-memory", GPU: "--gpu-count"}[resource]
                problems.append(f"{need.workload} asks {_show(resource, amount)} {resource} per pod, but the largest node "
                                f"({largest_name}) can allocate {_show(resource, largest)}: render with a smaller {option}, "
                                "or add a larger node")
            elif resource == GPU:
                fit = sum(int(free // amount) for free, _ in room)
                if fit < need.replicas:
                    if not need.autoscaled:
                        asks, fix = "asks", f"render with --replicas {max(fit, 1)}"
                    else:
                        asks = "may scale to"
                        fix = f"render with --max-replicas {fit}" if fit >= 2 else "render without --autoscale"
                    problems.append(f"{need.workload} {asks} {need.replicas} replicas of {amount:g} {GPU} each, but the nodes "
                                    f"can allocate {sum(f for f, _ in room):g} GPU in all (largest node {largest_name}: "
                                    f"{largest:g}), so {need.replicas - fit} replica(s) would never be scheduled: {fix}, "
                                    "or add GPU nodes")
    return problems


@dataclass(frozen=True)
class Claim:
    name: str
    storage_class: str | None
    access_modes: tuple
    size: float


def claims(docs: list[dict]) -> list[Claim]:
    """Every claim the manifests make, those of a StatefulSet's claim templates once per replica (autoscaled: at most)."""
    scaled = most_replicas(docs)
    out = []
    for doc in docs:
        if doc.get("kind") == "PersistentVolumeClaim":
            templates, names = [doc], [doc["metadata"]["name"]]
        elif doc.get("kind") == "StatefulSet":
            replicas = scaled.get(("StatefulSet", doc["metadata"]["name"]), doc["spec"].get("replicas", 1))
            for t in doc["spec"].get("volumeClaimTemplates", []):
                out += [_claim(t, f"{t['metadata']['name']}-{doc['metadata']['name']}-{i}") for i in range(replicas)]
            continue
        else:
            continue
        out += [_claim(t, n) for t, n in zip(templates, names)]
    return out


def _claim(doc: dict, name: str) -> Claim:
    spec = doc["spec"]
    return Claim(name, spec.get("storageClassName"), tuple(spec.get("accessModes", [])),
                 quantity(spec.get("resources", {}).get("requests", {}).get("storage", "0")))


def storage_problems(docs: list[dict], classes: list[dict], volumes: list[dict], bound: set[str]) -> list[str]:
    """Claims that could never bind: a StorageClass that does not exist, or none named, no default and no volume to take."""
    names = {c["metadata"]["name"] for c in classes}
    default = [c["metadata"]["name"] for c in classes if c["metadata"].get("annotations", {}).get(DEFAULT_CLASS) == "true"]
    free = [v for v in volumes if v.get("status", {}).get("phase") == "Available"]
    problems, unbindable = [], []
    for claim in claims(docs):
        if claim.name in bound:
            continue
        if claim.storage_class and claim.storage_class not in names:
            problems.append(f"claim {claim.name} names StorageClass {claim.storage_class!r}, which the cluster lacks "
                            f"(it has: {', '.join(sorted(names)) or 'none'}): render with --storage-class set to one of them")
            continue
        if claim.storage_class or default:
            continue
        match = next((v for v in free if not v["spec"].get("storageClassName") and not v["spec"].get("claimRef")
                      and set(claim.access_modes) <= set(v["spec"].get("accessModes", []))
                      and quantity(v["spec"].get("capacity", {}).get("storage", "0")) >= claim.size), None)
        if match is None:
            unbindable.append(f"{claim.name} ({'/'.join(claim.access_modes)}, {_show('memory', claim.size)})")
        else:
            free.remove(match)
    if unbindable:
        problems.append(f"claim{'s' if len(unbindable) > 1 else ''} {', '.join(unbindable)} cannot bind: the cluster has no "
                        "default StorageClass and no PersistentVolume left for them: render with --storage-class NAME, "
                        "or create a StorageClass or the volumes")
    return problems


# --- after applying -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    claims: tuple[int, int]  # bound, all
    scheduled: tuple[int, int]  # pods placed on a node, pods wanted
    ready: tuple[int, int]  # pods ready, pods wanted
    blockers: tuple[str, ...]  # what stands in the way, one line each, with its fix

    @property
    def done(self) -> bool:
        return not self.blockers and self.claims[0] == self.claims[1] and self.ready[0] >= self.ready[1] > 0


PULL_FAILURES = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")


def progress(workloads: list[dict], pods: list[dict], pvcs: list[dict], events: list[dict]) -> Progress:
    """How far the stack got, and what the cluster says stands in the way."""
    blockers: list[str] = []
    bound = sum(1 for c in pvcs if c.get("status", {}).get("phase") == "Bound")
    for c in pvcs:
        if c.get("status", {}).get("phase") == "Pending":
            said = _latest(events, "PersistentVolumeClaim", c["metadata"]["name"], ("FailedBinding", "ProvisioningFailed"))
            if said:
                blockers.append(f"claim {c['metadata']['name']} is not bound: {said} (render with --storage-class NAME, "
                                "or create a StorageClass or the volumes)")
    wanted = sum(w["spec"].get("replicas", 1) for w in workloads)
    scheduled = ready = 0
    for pod in pods:
        name, status = pod["metadata"]["name"], pod.get("status", {})
        conditions = {c["type"]: c for c in status.get("conditions", [])}
        placed = pod["spec"].get("nodeName") or conditions.get("PodScheduled", {}).get("status") == "True"
        scheduled += bool(placed)
        ready += conditions.get("Ready", {}).get("status") == "True"
        waiting = conditions.get("PodScheduled", {})
        if not placed and waiting.get("reason") == "Unschedulable":
            message = waiting.get("message", "")
            if "unbound immediate PersistentVolumeClaims" not in message or not blockers:
                blockers.append(f"pod {name} cannot be scheduled: {message.strip()} ({_fix_for(message)})")
        for cs in status.get("initContainerStatuses", []) + status.get("containerStatuses", []):
            reason = cs.get("state", {}).get("waiting", {}).get("reason")
            if reason in PULL_FAILURES:
                blockers.append(f"pod {name} cannot pull image {cs.get('image')}: {reason} (push it to a registry the nodes "
                                "reach and name it in a kustomize images: entry, or load it on the nodes)")
    for w in workloads:
        said = _latest(events, None, None, ("FailedCreate",), owner=w["metadata"]["name"])
        if said and "PodSecurity" in said:
            blockers.append(f"{w['kind'].lower()}/{w['metadata']['name']} cannot make its pods: {said} (the namespace's "
                            "pod-security.kubernetes.io/enforce level refuses them: render them again with this orch, "
                            "whose pods meet restricted, or drop the overlay that changed their securityContext)")
    return Progress((bound, len(pvcs)), (scheduled, wanted), (ready, wanted), tuple(dict.fromkeys(blockers)))


def rolled_out(workloads: list[dict]) -> bool:
    """Every workload's controller has seen its newest spec, and all its replicas are of it and ready."""
    for w in workloads:
        status, want = w.get("status", {}), w["spec"].get("replicas", 1)
        if status.get("observedGeneration", 0) < w["metadata"].get("generation", 1):
            return False
        if status.get("updatedReplicas", 0) != want or status.get("readyReplicas", 0) != want:
            return False
    return True


def _latest(events: list[dict], kind: str | None, name: str | None, reasons: tuple, owner: str | None = None) -> str | None:
    """The newest message of an event with one of `reasons` about that object (or any object `owner` names, for FailedCreate)."""
    found = [e for e in events if e.get("reason") in reasons and e.get("type") == "Warning"
             and (kind is None or e["involvedObject"].get("kind") == kind)
             and (name is None or e["involvedObject"].get("name") == name)
             and (owner is None or e["involvedObject"].get("name") == owner
                  or e["involvedObject"].get("kind") == "ReplicaSet" and e["involvedObject"].get("name", "").startswith(owner + "-"))]
    if not found:
        return None
    newest = max(found, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
    return " ".join(newest.get("message", "").split())[:400]


def _fix_for(message: str) -> str:
    if "Insufficient nvidia.com/gpu" in message:
        return "render with fewer --replicas or --gpu-count, or add GPU nodes"
    if "Insufficient memory" in message or "Insufficient cpu" in message:
        return "render with a smaller --ollama-memory/--ollama-cpu, or add a larger node"
    if "unbound immediate PersistentVolumeClaims" in message:
        return "its claims must bind first"
    if "node affinity/selector" in message or "taint" in message:
        return "fix --node-selector/--toleration in orch k8s render, or label the nodes"
    return "kubectl describe pod shows the scheduler's reasons"
