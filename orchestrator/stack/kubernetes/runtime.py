"""The kubernetes runtime: `kubectl` applies the rendered directory, puts the build on the model volume, and waits for readiness.

orch builds no scheduler of its own: Kubernetes runs the replicas, restarts
them and balances across the Ready ones. Every call goes through the user's
kubectl and kube context ($ORCH_KUBECTL picks another kubectl).
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import yaml

from orchestrator import settings
from orchestrator.errors import OrchError
from orchestrator.events import Reporter
from orchestrator.files import sha256_file
from orchestrator.stack.config import known_services
from orchestrator.stack.process import stream
from orchestrator.stack.runtime import ServiceState, Started
from orchestrator.stack.kubernetes import checks
from orchestrator.stack.kubernetes.manifests import MODELS_MOUNT, SECRET_FILE

KUBECTL_ENV = settings.KUBECTL_ENV
LOADER = "orch-model-loader"
PART_OF = "app.kubernetes.io/part-of=orch"
SETTLE = 10.0  # seconds the cluster must keep saying a thing stands in the way before orch k8s apply gives up on it
POLL = 2.0


def kubectl_binary() -> str:
    found = settings.kubectl() or shutil.which("kubectl")
    if not found:
        raise OrchError("kubectl is not installed (no kubectl on PATH): install it (https://kubernetes.io/docs/tasks/tools/), "
                        f"or set {KUBECTL_ENV}")
    return found


class Kubectl:
    def __init__(self, namespace: str | None = None):
        self.binary, self.namespace = kubectl_binary(), namespace

    def run(self, *args: str, check: bool = True, timeout: float = 120, namespaced: bool = True, input: str | None = None):
        cmd = [self.binary, *(["-n", self.namespace] if namespaced and self.namespace else []), *args]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input,
                                  stdin=subprocess.DEVNULL if input is None else None)
        except subprocess.TimeoutExpired:
            raise OrchError(f"kubectl {args[0]} did not finish within {timeout:g} s: check the cluster with kubectl get pods") from None
        if check and proc.returncode != 0:
            raise OrchError(f"kubectl {' '.join(args[:2])} failed: {_first(proc.stderr)}")
        return proc

    def items(self, kind: str, reporter: Reporter) -> list[dict] | None:
        """The objects of a kind (cluster-wide ones included), or None with a note when this user may not list them."""
        proc = self.run("get", kind, "-o", "json", check=False, namespaced=kind == "pvc")
        if proc.returncode != 0:
            if "forbidden" in proc.stderr.lower():
                reporter.note(f"may not list {kind} here, so that check is skipped: {_first(proc.stderr)}", "warning")
                return None
            raise OrchError(f"kubectl get {kind} failed: {_first(proc.stderr)}")
        return json.loads(proc.stdout).get("items", [])

    def context(self) -> str:
        """The kube context in use, after checking a cluster answers there; one line naming the problem when none does."""
        proc = self.run("config", "current-context", check=False, namespaced=False)
        context = proc.stdout.strip()
        if proc.returncode != 0 or not context:
            raise OrchError(f"no kube context is set ({_first(proc.stderr) or 'kubectl config current-context is empty'}): "
                            "set one with kubectl config use-context NAME, or point KUBECONFIG at your cluster's config")
        probe = self.run("get", "--raw", "/version", "--request-timeout=10s", check=False, namespaced=False, timeout=30)
        if probe.returncode != 0:
            raise OrchError(f"no Kubernetes cluster answers for kube context {context!r} ({_first(probe.stderr)}): "
                            "check kubectl config current-context, KUBECONFIG and your network, then run orch k8s apply again")
        return context


def _first(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1][:240] if lines else ""


def namespace_of(directory: Path) -> str:
    try:
        return yaml.safe_load((directory / "kustomization.yaml").read_text())["namespace"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        raise OrchError(f"{directory} holds no kustomization.yaml from orch k8s render: render one first") from None


def _events(k: Kubectl) -> list[dict]:
    return json.loads(k.run("get", "events", "-o", "json").stdout).get("items", [])


def _mark(event: dict) -> tuple:
    """An event as it stands: one the cluster repeats gets a new count and time, so it counts again."""
    series = event.get("series") or {}
    return (event["metadata"].get("uid"), event.get("count"), series.get("count"), event.get("lastTimestamp"))


def _event_marks(k: Kubectl) -> set:
    return {_mark(e) for e in _events(k)}


def rendered_docs(directory: Path, k: Kubectl) -> list[dict]:
    """The objects the directory applies, as kustomize builds them (names with their generated suffixes)."""
    return [d for d in yaml.safe_load_all(k.run("kustomize", str(directory), namespaced=False).stdout) if d]


def _prebound(claim, docs: list[dict]) -> bool:
    """A claim this render binds to a volume of its own (--model-volume hostpath)."""
    return any(d["kind"] == "PersistentVolumeClaim" and d["metadata"]["name"] == claim.name and d["spec"].get("volumeName")
               for d in docs)


def model_of(directory: Path) -> dict:
    """The model the rendered StatefulSet creates: name, files on the volume, sha256 (from its environment)."""
    docs = list(yaml.safe_load_all((directory / "ollama.yaml").read_text()))
    sts = next(d for d in docs if d and d.get("kind") == "StatefulSet")
    env = {e["name"]: e["value"] for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
    return {"name": env["MODEL_NAME"], "modelfile": env["MODELFILE"], "sha256": env["MODEL_SHA256"]}


@dataclass(frozen=True)
class Rendered:
    """What the Kubernetes runtime starts from: a directory `orch k8s render` wrote (it names the build it came from)."""

    directory: Path


SERVICES = ("ollama", "open-webui", "orch-health")


class KubernetesRuntime:
    name = "kubernetes"

    def preflight(self, plan: Rendered) -> None:
        """A rendered directory and a cluster that answers in the current kube context; nothing is changed."""
        namespace_of(plan.directory)
        Kubectl().context()

    def up(self, plan: Rendered, *, wait: float, reporter: Reporter) -> Started:
        """Check the cluster can run the manifests, apply them server-side, put the build on the model volume (unless the
        pods fetch it from --model-url), then follow claims, scheduling and readiness until done or blocked."""
        directory = plan.directory
        k = Kubectl(namespace_of(directory))
        docs = rendered_docs(directory, k)
        with reporter.task("check the cluster can run them"):
            problems = self.problems(docs, k, reporter)
        if problems:
            raise OrchError(f"the cluster cannot run these manifests, nothing was applied: {'; '.join(problems)}")
        seen_before = _event_marks(k)  # what the cluster said before this apply is not what stands in its way now
        with reporter.task("kubectl apply --server-side"):
            k.run("apply", "--server-side", "--field-manager=orch", "--force-conflicts", "-k", str(directory), namespaced=False,
                  timeout=300)
        deadline = time.monotonic() + wait
        if not _source(directory).get("model_url"):
            self.follow(k, docs, reporter, deadline, seen_before, until="claims")
            self.load_model(directory, k, _source_of(directory), reporter)
        self.follow(k, docs, reporter, deadline, seen_before)
        return Started(directory / SECRET_FILE, created_secrets=False, changed=[])

    def problems(self, docs: list[dict], k: Kubectl, reporter: Reporter) -> list[str]:
        """What the cluster itself says before anything is applied: room on the nodes, claims that could bind, and
        whether an existing namespace's PodSecurity level admits the pods."""
        out = []
        if any(d.get("kind") == "ScaledObject" for d in docs) and not k.run("api-resources", "--api-group=keda.sh", "-o", "name",
                                                                           check=False, namespaced=False).stdout.strip():
            out.append("KEDA is not installed in this cluster (no keda.sh API): helm install keda kedacore/keda --namespace keda "
                       "--create-namespace (https://keda.sh/docs/deploy/), or render without --autoscale")
        nodes = k.items("nodes", reporter)
        if nodes is not None:
            out += checks.capacity_problems(docs, nodes)
        classes, volumes = k.items("storageclasses", reporter), k.items("persistentvolumes", reporter)
        claims = k.items("pvc", reporter)
        if classes is not None and volumes is not None:
            bound = {c["metadata"]["name"] for c in claims or [] if c.get("status", {}).get("phase") == "Bound"}
            bound |= {c.name for c in checks.claims(docs) if _prebound(c, docs)}  # its own hostPath volume waits for it
            out += checks.storage_problems(docs, classes, volumes, bound)
        if k.run("get", "namespace", k.namespace, check=False, namespaced=False).returncode == 0:
            out += self.admission_problems(docs, k)
        return out

    def admission_problems(self, docs: list[dict], k: Kubectl) -> list[str]:
        """Each pod orch renders, created with --dry-run=server in the existing namespace: PodSecurity judges it there."""
        pods = [{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"orch-check-{d['metadata']['name']}"[:63]},
                 "spec": checks.pod_template(d)["spec"]} for d in docs if checks.pod_template(d) is not None]
        proc = k.run("create", "--dry-run=server", "-o", "name", "-f", "-", check=False,
                     input=json.dumps({"apiVersion": "v1", "kind": "List", "items": pods}))
        refused = [ln.strip() for ln in proc.stderr.splitlines() if "violates PodSecurity" in ln]
        return [f"namespace {k.namespace} refuses orch's pods: {refused[0][:300]} (its pod-security.kubernetes.io/enforce "
                "label; orch's own pods meet restricted, so an overlay changed them)"] if refused else []

    def follow(self, k: Kubectl, docs: list[dict], reporter: Reporter, deadline: float, seen_before: set, *,
               until: str = "ready", settle: float = SETTLE) -> None:
        """Claims bound, pods scheduled, pods ready, as bars; what the cluster says stands in the way ends it in one line
        once it has said so for `settle` seconds."""
        workloads = [d for d in docs if d["kind"] in ("StatefulSet", "Deployment")]
        seen: dict[str, float] = {}
        with reporter.task("claims bound", total=None, unit="claims") as bound, \
                reporter.task("pods scheduled", total=None, unit="pods") as placed, \
                reporter.task("pods ready", total=None, unit="pods") as ready:
            while True:
                state = json.loads(k.run("get", "statefulsets,deployments,pods,persistentvolumeclaims", "-l", PART_OF,
                                         "-o", "json").stdout)
                events = [e for e in _events(k) if _mark(e) not in seen_before]
                items = state.get("items", [])
                now = [i for i in items if i["kind"] in ("StatefulSet", "Deployment")
                       and any(i["metadata"]["name"] == w["metadata"]["name"] and i["kind"] == w["kind"] for w in workloads)]
                names = {w["metadata"]["name"] for w in workloads}  # not the loader's pod, nor the backup Jobs'
                pods = [i for i in items if i["kind"] == "Pod" and i["metadata"].get("labels", {}).get("app.kubernetes.io/name") in names]
                p = checks.progress(now, pods, [i for i in items if i["kind"] == "PersistentVolumeClaim"], events)
                bound.update(completed=p.claims[0], total=p.claims[1])
                placed.update(completed=p.scheduled[0], total=p.scheduled[1])
                ready.update(completed=p.ready[0], total=p.ready[1])
                if (until == "claims" and p.claims[0] == p.claims[1] and p.claims[1]) or (until == "ready" and p.done
                                                                                         and checks.rolled_out(now)):
                    return
                t = time.monotonic()
                seen = {b: seen.get(b, t) for b in p.blockers}
                lasting = [b for b, since in seen.items() if t - since >= settle]
                if lasting:
                    raise OrchError(f"the stack cannot come up: {'; '.join(lasting)}")
                if t > deadline:
                    raise OrchError(f"the stack was not ready in time ({p.claims[0]}/{p.claims[1]} claims bound, {p.scheduled[0]}/"
                                    f"{p.scheduled[1]} pods scheduled, {p.ready[0]}/{p.ready[1]} ready): orch k8s status, "
                                    "kubectl describe pods -n " + str(k.namespace))
                time.sleep(POLL)

    def load_model(self, directory: Path, k: Kubectl, source: Path, reporter: Reporter) -> None:
        """Copy the GGUF and Modelfile onto the model volume through a short-lived pod, unless the same bytes are there."""
        model = model_of(directory)
        target = str(Path(model["modelfile"]).parent)
        gguf_name = next((p.name for p in source.glob("*.gguf") if _sha256_matches(p, model["sha256"])), None)
        if gguf_name is None:
            raise OrchError(f"{source} no longer holds the GGUF these manifests were rendered for (sha256 {model['sha256'][:12]}): "
                            "render them again with orch k8s render")
        k.run("apply", "-f", str(directory / "loader" / "model-loader.yaml"), namespaced=False)
        try:
            k.run("wait", "--for=condition=Ready", f"pod/{LOADER}", "--timeout=300s", timeout=330)
            have = k.run("exec", LOADER, "--", "cat", f"{target}/.complete", check=False).stdout.strip()
            if have == model["sha256"]:
                reporter.note(f"the model volume already holds {gguf_name} (sha256 {model['sha256'][:12]})")
                return
            incoming = f"{MODELS_MOUNT}/.incoming-{model['sha256'][:12]}"
            k.run("exec", LOADER, "--", "mkdir", "-p", incoming)
            for f in (source / gguf_name, source / Path(model["modelfile"]).name):
                with reporter.task(f"copy {f.name} to the model volume"):  # kubectl cp tells no progress
                    k.run("cp", str(f), f"{LOADER}:{incoming}/{f.name}", timeout=3600)
            k.run("exec", LOADER, "--", "sh", "-c", install_script(incoming, gguf_name, target, model["sha256"]), timeout=1800)
        finally:
            k.run("delete", "pod", LOADER, "--ignore-not-found", "--wait=false", check=False)

    def down(self, directory: Path, *, volumes: bool = False) -> list[str]:
        """Delete what apply made, as the directory names it (the CronJob's Jobs go with it); the namespace stays, and the
        claims (with them models and chats) and a hostPath volume go only with --volumes."""
        k = Kubectl(namespace_of(directory))
        k.context()
        keep = {"Namespace"} | (set() if volumes else {"PersistentVolumeClaim", "PersistentVolume"})
        docs = [d for d in rendered_docs(directory, k) if d["kind"] not in keep]
        docs += [d for d in yaml.safe_load_all((directory / "loader" / "model-loader.yaml").read_text()) if d]
        out = []
        for core in (True, False):  # a ServiceMonitor's kind may be unknown to the cluster: that delete may fail alone
            some = [d for d in docs if (d["kind"] != "ServiceMonitor") == core]
            if some:
                proc = k.run("delete", "-f", "-", "--ignore-not-found", "--wait=true", "--cascade=foreground", "-o", "name",
                             timeout=600, check=core, input=json.dumps({"apiVersion": "v1", "kind": "List", "items": some}))
                out += proc.stdout.split()
        if volumes:  # the replicas' stores, made from the StatefulSet's claim template
            out += k.run("delete", "pvc", "-l", "app.kubernetes.io/name=ollama", "--ignore-not-found", "--wait=true", "-o", "name",
                         timeout=600).stdout.split()
        return out

    def status(self, directory: Path) -> list[ServiceState]:
        k = Kubectl(namespace_of(directory))
        k.context()  # no cluster: the one line apply and down give, with its fix
        pods = json.loads(k.run("get", "pods", "-l", PART_OF, "-o", "json").stdout).get("items", [])
        out = []
        for pod in pods:
            name = pod["metadata"]["name"]
            ready = next((c["status"] == "True" for c in pod["status"].get("conditions", []) if c["type"] == "Ready"), False)
            restarts = sum(c.get("restartCount", 0) for c in pod["status"].get("containerStatuses", []))
            waiting = [c["state"]["waiting"].get("reason") for c in pod["status"].get("containerStatuses", []) if "waiting" in c["state"]]
            state = "ready" if ready else (waiting[0] if waiting else pod["status"].get("phase", "unknown")).lower()
            out.append(ServiceState(name, state, f"{restarts} restarts" + (", serves the model" if ready and name.startswith("ollama-") else "")))
        return out

    data_in_stack = False

    def running(self, directory: Path) -> bool:
        return any(s.state not in ("succeeded", "failed") for s in self.status(directory))

    @contextmanager
    def webui_data(self, directory: Path) -> Iterator[Path | None]:
        """Open WebUI's data is on its volume in the cluster: the CronJob of --backup-schedule backs it up there."""
        raise OrchError(f"the stack in {directory} runs in Kubernetes: its backups are the CronJob's "
                        "(orch k8s render --backup-schedule), which runs orch backup --webui-data on Open WebUI's volume")
        yield None

    def put_webui_data(self, directory: Path, data: Path) -> None:
        raise OrchError("a Kubernetes stack is restored by a Job running orch restore --webui-data on Open WebUI's volume "
                        "(README: Backups and upgrades)")

    def logs(self, directory: Path, services: list[str] | None = None, *, follow: bool = False) -> Iterator[str]:
        known_services(services, SERVICES)
        k = Kubectl(namespace_of(directory))
        k.context()
        for service in services or SERVICES:
            yield from stream([k.binary, "-n", k.namespace, "logs", "-l", f"app.kubernetes.io/name={service}", "--all-containers",
                               "--prefix", "--tail=200", *(["-f"] if follow else [])])


def _sha256_matches(path: Path, sha: str) -> bool:
    record = path.parent / "build.json"
    if record.is_file():
        for a in json.loads(record.read_text()).get("artifacts", []):
            if a.get("file") == path.name:
                return a.get("sha256") == sha
    return sha256_file(path) == sha


def install_script(incoming: str, gguf_name: str, target: str, sha256: str) -> str:
    """The loader pod's last step: check the copied GGUF's sha256, then move the copy into place and mark it complete.

    Every name is quoted: it is data, whatever characters a file name holds.
    """
    q = shlex.quote
    gguf, sha = q(f"{incoming}/{gguf_name}"), q(sha256)
    return (f'set -e; test "$(sha256sum {gguf} | cut -d" " -f1)" = {sha} '
            f'|| {{ echo "the copied GGUF does not match sha256 "{sha}; exit 1; }}; '
            f"rm -rf {q(target)}; mv {q(incoming)} {q(target)}; echo {sha} > {q(target + '/.complete')}")


def _source(directory: Path) -> dict:
    try:
        source = json.loads((directory / "source.json").read_text())
        source["build"]
        return source
    except (OSError, ValueError, KeyError, TypeError):
        raise OrchError(f"{directory} does not say which build it was rendered from: render it again with orch k8s render") from None


def _source_of(directory: Path) -> Path:
    return Path(_source(directory)["build"])
