"""What `orch k8s render` makes, decided (and every input checked) before anything is written."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator import modelfile, names
from orchestrator.errors import BadInput
from orchestrator.files import sha256_file

QUANTITY = r"([0-9]+(?:\.[0-9]+)?)(m|Ki|Mi|Gi|Ti|k|M|G|T)?"  # a Kubernetes resource quantity, as orch accepts it
DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
CRON = re.compile(r"@(yearly|annually|monthly|weekly|daily|midnight|hourly)|[0-9A-Za-z*/,?-]+( [0-9A-Za-z*/,?-]+){4}")
EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


@dataclass(frozen=True)
class ModelFiles:
    """The built model as the pods get it: a GGUF and its Modelfile, copied onto the model volume."""

    name: str  # the Ollama model name the pods create
    directory: Path
    modelfile: str
    gguf: str
    sha256: str
    size: int

    @property
    def slug(self) -> str:
        """The model's directory on the volume."""
        return re.sub(r"[^a-z0-9.-]+", "-", self.name.lower()).strip("-.")


@dataclass(frozen=True)
class Autoscale:
    """KEDA scales the Ollama StatefulSet between the bounds on the monitor's chat time to first token (p95)."""

    min_replicas: int = 1
    max_replicas: int = 4
    ttft_target: float = 2.0  # seconds, as orch bench --ttft-target
    cooldown: int = 300  # seconds the load must stay low before a replica goes
    drain: int = 120  # seconds a leaving replica keeps serving what it already has (Ollama cuts streams at SIGTERM)
    window: int = 60  # seconds over which the monitor takes the p95


@dataclass(frozen=True)
class K8sPlan:
    out: Path
    model: ModelFiles
    namespace: str = "orch"
    replicas: int = 1
    gpu: bool = False
    gpu_count: int = 1
    node_selector: dict = field(default_factory=dict)
    tolerations: tuple = ()
    num_parallel: int | None = None
    model_volume: str = "pvc"  # pvc (ReadWriteMany) | hostpath (a single node)
    host_path: str | None = None
    model_url: str | None = None  # where the Ollama pods fetch the GGUF from (checked by sha256), instead of kubectl cp
    storage_class: str | None = None
    host: str | None = None  # an Ingress for Open WebUI on this host name
    tls_secret: str | None = None
    service_monitor: bool = False
    monitor_image: str | None = None  # an image with orch installed; else the pinned Python image installs it at start
    pip_index_url: str | None = None
    ollama_memory: str | None = None  # overrides the memory request sized from the model
    ollama_cpu: str = "2"
    backup_schedule: str | None = None  # a CronJob backing Open WebUI's volume up on this cron schedule
    backup_keep: int = 7
    backup_size: str = "10Gi"
    autoscale: Autoscale | None = None

    @property
    def ollama_resources(self) -> dict:
        """Requests sized from the build (the model, its KV cache and the server: 1.2 x the GGUF plus 1 GiB), limits twice that."""
        memory = self.ollama_memory or f"{int(self.model.size * 1.2 / 2**30) + 1}Gi"
        number, unit = re.fullmatch(QUANTITY, memory).groups()
        cpu_number, cpu_unit = re.fullmatch(QUANTITY, self.ollama_cpu).groups()
        double = lambda n, u: f"{float(n) * 2:g}{u or ''}"  # noqa: E731
        return {"requests": {"cpu": self.ollama_cpu, "memory": memory},
                "limits": {"cpu": double(cpu_number, cpu_unit), "memory": double(number, unit)}}

    @property
    def store_size(self) -> str:
        """Each replica's own Ollama store: the model's blobs plus room."""
        return f"{max(10, int(self.model.size * 1.3 / 2**30) + 5)}Gi"

    @property
    def model_volume_size(self) -> str:
        return f"{max(5, int(self.model.size * 1.2 / 2**30) + 2)}Gi"


def load_model(target: Path, name: str | None = None) -> ModelFiles:
    """BUILD_DIR (an orch build: its first artifact) or one Modelfile beside its GGUF."""
    target = Path(target).expanduser()
    if target.is_dir():
        try:
            record = json.loads((target / "build.json").read_text())
            art = record["artifacts"][0]
        except (OSError, ValueError, KeyError, IndexError):
            raise BadInput(f"{target} is not an orch build (no usable build.json): pass a directory orch build wrote, or a Modelfile") from None
        mf = target / art["modelfile"]
        sha, size = art.get("sha256"), art.get("size")
        model = name or art["ollama_name"]
    elif target.is_file():
        mf, sha, size, model = target, None, None, name
        if model is None:
            raise BadInput(f"{target} is a Modelfile with no build.json beside it: pass --name NAME[:TAG]")
    else:
        raise BadInput(f"{target} does not exist: pass an orch build directory or a Modelfile")
    names.validate(model)
    parsed = modelfile.parse(mf)
    gguf = parsed.gguf
    if gguf is None or not gguf.is_file() or gguf.parent != mf.resolve().parent:
        raise BadInput(f"{mf}: FROM {parsed.from_} is not a GGUF beside the Modelfile: the pods need both on one volume")
    if sha is None or size != gguf.stat().st_size:
        sha, size = sha256_file(gguf), gguf.stat().st_size
    return ModelFiles(model, mf.resolve().parent, mf.name, gguf.name, sha, size)


def parse_node_selector(values: list[str]) -> dict:
    out = {}
    for v in values:
        key, sep, value = v.partition("=")
        if not sep or not key:
            raise BadInput(f"--node-selector {v!r} is not KEY=VALUE: e.g. --node-selector nvidia.com/gpu.present=true")
        out[key] = value
    return out


def parse_toleration(value: str) -> dict:
    """KEY[=VALUE][:EFFECT], as kubectl taint writes taints: nvidia.com/gpu=present:NoSchedule, or nvidia.com/gpu:NoSchedule."""
    spec, _, effect = value.partition(":")
    key, sep, val = spec.partition("=")
    if not key or (effect and effect not in EFFECTS):
        raise BadInput(f"--toleration {value!r} is not KEY[=VALUE][:EFFECT] with EFFECT one of {', '.join(EFFECTS)}")
    t = {"key": key, "operator": "Equal" if sep else "Exists"}
    if sep:
        t["value"] = val
    if effect:
        t["effect"] = effect
    return t


def _ingress_host(name: str) -> bool:
    """A host name an Ingress rule takes: DNS-1123 labels joined by dots, the first may be '*'."""
    labels = name.split(".")
    return (len(name) <= 253 and len(labels) >= 1 and all(DNS_1123_LABEL.fullmatch(label) for label in labels[1:] or labels)
            and (labels[0] == "*" and len(labels) > 1 or bool(DNS_1123_LABEL.fullmatch(labels[0]))))


def make_plan(target: Path, out: Path, *, name: str | None = None, namespace: str = "orch", replicas: int = 1, gpu: bool = False,
              gpu_count: int = 1, node_selector: list[str] = (), tolerations: list[str] = (), **kw) -> K8sPlan:
    if not DNS_1123_LABEL.fullmatch(namespace):
        raise BadInput(f"--namespace {namespace!r} is not a DNS-1123 label: lower-case letters, digits and '-', at most 63, "
                       "starting and ending with a letter or digit")
    if replicas < 1:
        raise BadInput(f"--replicas {replicas}: at least 1 Ollama replica is needed")
    if gpu_count < 1:
        raise BadInput(f"--gpu-count {gpu_count}: at least 1 GPU per replica (or leave out --gpu)")
    if kw.get("model_volume", "pvc") == "hostpath" and not kw.get("host_path"):
        raise BadInput("--model-volume hostpath needs --host-path /a/directory/on/the/node")
    if kw.get("host_path") is not None:
        hp = kw["host_path"]
        if not hp.startswith("/") or Path(hp).resolve() == Path("/") or ".." in Path(hp).parts or "\n" in hp:
            raise BadInput(f"--host-path {hp!r} must be an absolute directory on the node other than / (the pods write models there)")
    if kw.get("model_volume", "pvc") == "hostpath" and replicas > 1 and not node_selector:
        raise BadInput("a hostPath model volume is on one node: with --replicas above 1 pin the pods there with --node-selector")
    url = kw.get("model_url")
    if url is not None and (not re.fullmatch(r"https?://[^\s/]+(/\S*)?", url) or "@" in url.split("/")[2]):
        raise BadInput(f"--model-url {url!r} is not an http(s) URL without a password in it, such as "
                       "https://models.example.com/baichuan2-7b-chat.Q4_K_M.gguf (the GGUF itself, checked by its sha256)")
    if kw.get("tls_secret") and not kw.get("host"):
        raise BadInput("--tls-secret needs --ingress-host (the Ingress host name it is for)")
    if kw.get("host") is not None and not _ingress_host(kw["host"]):
        raise BadInput(f"--ingress-host {kw['host']!r} is not a DNS name such as chat.example.com (no scheme, port or path; "
                       "the Ollama URL is --host in the other commands)")
    for option, key in (("--ollama-memory", "ollama_memory"), ("--ollama-cpu", "ollama_cpu")):
        if kw.get(key) is not None and not re.fullmatch(QUANTITY, kw[key]):
            raise BadInput(f"{option} {kw[key]!r} is not a Kubernetes quantity such as 16Gi or 4 (or 500m for CPU)")
    if kw.get("backup_schedule") is not None and not CRON.fullmatch(kw["backup_schedule"].strip()):
        raise BadInput(f"--backup-schedule {kw['backup_schedule']!r} is not a cron schedule: five fields such as '0 3 * * *' "
                       "(03:00 every day), or @daily, @weekly, @hourly")
    if kw.get("backup_keep", 1) < 1:
        raise BadInput("--backup-keep takes 1 or more")
    if kw.get("backup_size") is not None and not re.fullmatch(QUANTITY, kw["backup_size"]):
        raise BadInput(f"--backup-size {kw['backup_size']!r} is not a Kubernetes quantity such as 20Gi")
    if kw.get("num_parallel") is not None and kw["num_parallel"] < 1:
        raise BadInput("--num-parallel takes 1 or more")
    scale = kw.get("autoscale")
    if scale is not None:
        if scale.min_replicas < 1:
            raise BadInput(f"--min-replicas {scale.min_replicas}: at least 1 (a replica that has to load the model first "
                           "cannot answer the first user in time)")
        if scale.max_replicas <= scale.min_replicas:
            raise BadInput(f"--max-replicas {scale.max_replicas} leaves nothing to scale above --min-replicas "
                           f"{scale.min_replicas}: give a larger --max-replicas, or leave out --autoscale and use --replicas")
        if replicas != 1:
            raise BadInput("--replicas is fixed; with --autoscale give --min-replicas and --max-replicas instead")
        if scale.ttft_target <= 0 or scale.cooldown < 0 or scale.drain < 0:
            raise BadInput("--ttft-target must be above 0 seconds, and --cooldown and --drain 0 or more")
        replicas = scale.min_replicas
        if kw.get("model_volume", "pvc") == "hostpath" and not node_selector:
            raise BadInput("a hostPath model volume is on one node: with --autoscale pin the pods there with --node-selector")
    model = load_model(target, name)
    return K8sPlan(out=Path(out).expanduser().resolve(), model=model, namespace=namespace, replicas=replicas, gpu=gpu,
                   gpu_count=gpu_count, node_selector=parse_node_selector(list(node_selector)),
                   tolerations=tuple(parse_toleration(t) for t in tolerations), **kw)
