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
from orchestrator.stack.kubernetes.manifests import MODELS_MOUNT, SECRET_FILE

KUBECTL_ENV = settings.KUBECTL_ENV
LOADER = "orch-model-loader"
PART_OF = "app.kubernetes.io/part-of=orch"


def kubectl_binary() -> str:
    found = settings.kubectl() or shutil.which("kubectl")
    if not found:
        raise OrchError("kubectl is not installed (no kubectl on PATH): install it (https://kubernetes.io/docs/tasks/tools/), "
                        f"or set {KUBECTL_ENV}")
    return found


class Kubectl:
    def __init__(self, namespace: str | None = None):
        self.binary, self.namespace = kubectl_binary(), namespace

    def run(self, *args: str, check: bool = True, timeout: float = 120, namespaced: bool = True):
        cmd = [self.binary, *(["-n", self.namespace] if namespaced and self.namespace else []), *args]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise OrchError(f"kubectl {args[0]} did not finish within {timeout:g} s: check the cluster with kubectl get pods") from None
        if check and proc.returncode != 0:
            raise OrchError(f"kubectl {' '.join(args[:2])} failed: {_first(proc.stderr)}")
        return proc

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
        """kubectl apply -k, the build onto the model volume (checked by sha256), then wait for the rollouts and readiness."""
        directory = plan.directory
        k = Kubectl(namespace_of(directory))
        with reporter.task("kubectl apply -k"):
            k.run("apply", "-k", str(directory), namespaced=False, timeout=300)
        self.load_model(directory, k, _source_of(directory), reporter)
        deadline = time.monotonic() + wait
        for kind_name in ("statefulset/ollama", "deployment/open-webui", "deployment/orch-health"):
            left = max(10, int(deadline - time.monotonic()))
            with reporter.task(f"rollout of {kind_name}"):
                k.run("rollout", "status", kind_name, f"--timeout={left}s", timeout=left + 30)
        return Started(directory / SECRET_FILE, created_secrets=False, changed=[])

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
        k = Kubectl(namespace_of(directory))
        k.context()
        kinds = "statefulset,deployment,service,networkpolicy,ingress,configmap,secret,pod"
        if volumes:
            kinds += ",persistentvolumeclaim"
        out = k.run("delete", kinds, "-l", PART_OF, "--ignore-not-found", "--wait=true", timeout=600).stdout
        k.run("delete", "servicemonitor", "-l", PART_OF, "--ignore-not-found", check=False)
        return [line.split()[0] for line in out.splitlines() if line.strip()]

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


def _source_of(directory: Path) -> Path:
    try:
        return Path(json.loads((directory / "source.json").read_text())["build"])
    except (OSError, ValueError, KeyError):
        raise OrchError(f"{directory} does not say which build it was rendered from: render it again with orch k8s render") from None
