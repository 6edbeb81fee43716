"""orch k8s render, apply, status, down: the stack on a Kubernetes cluster."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from orchestrator.cli import OrchTyper, app, render, renamed

k8s = OrchTyper(help="The stack on Kubernetes: render plain manifests (a kustomize directory), apply them, watch them, take them down.\n\n"
                "Examples:\n\n"
                "  orch k8s render baichuan2-7b-chat --replicas 3 --gpu --namespace chat --dir ./k8s\n\n"
                "  orch k8s apply --dir ./k8s\n\n"
                "  orch k8s status --dir ./k8s\n\n"
                "  orch k8s logs ollama --dir ./k8s\n\n"
                "  orch k8s down --dir ./k8s")
K8S_DIR_HELP = "The directory orch k8s render wrote."
app.add_typer(k8s, name="k8s")


@k8s.command("render")
def render_cmd(
    build: Path = typer.Argument(..., metavar="BUILD", help="A build's name (as orch build gave it: tiny), an orch build directory "
                                 "(its first type), or a Modelfile beside its GGUF."),
    out: Optional[Path] = typer.Option(None, "--dir", "-d", help="Directory for the manifests and kustomization.yaml [default: k8s]."),
    old_out: Optional[Path] = typer.Option(None, "--out", "-o", hidden=True),
    namespace: str = typer.Option("orch", "--namespace", "-n", help="Namespace for everything (a DNS-1123 label)."),
    replicas: int = typer.Option(1, "--replicas", help="Ollama replicas (pods), each serving the model."),
    gpu: bool = typer.Option(False, "--gpu", help="Give each Ollama pod NVIDIA GPUs (nvidia.com/gpu limits)."),
    gpu_count: int = typer.Option(1, "--gpu-count", help="GPUs per Ollama pod, with --gpu."),
    node_selector: Optional[List[str]] = typer.Option(None, "--node-selector", help="KEY=VALUE for the Ollama pods; repeatable."),
    toleration: Optional[List[str]] = typer.Option(None, "--toleration", help="KEY[=VALUE][:EFFECT] the Ollama pods tolerate; repeatable."),
    num_parallel: Optional[int] = typer.Option(None, "--num-parallel", help="OLLAMA_NUM_PARALLEL: requests each pod serves at once."),
    name: Optional[str] = typer.Option(None, "--name", help="The model's name in Ollama [default: the one build.json records]."),
    model_volume: str = typer.Option("pvc", "--model-volume", help="pvc (a ReadWriteMany claim) or hostpath (one node's directory)."),
    host_path: Optional[str] = typer.Option(None, "--host-path", help="The node directory, with --model-volume hostpath."),
    model_url: Optional[str] = typer.Option(None, "--model-url", help="Where the Ollama pods fetch the GGUF from (an object store, "
                                            "a mirror; checked by sha256), instead of orch k8s apply copying it through the API server."),
    storage_class: Optional[str] = typer.Option(None, "--storage-class", help="StorageClass for every claim [default: the cluster's]."),
    host: Optional[str] = typer.Option(None, "--ingress-host", help="An Ingress for the browser chat on this DNS name, e.g. chat.example.com."),
    tls_secret: Optional[str] = typer.Option(None, "--tls-secret", help="The TLS Secret for --ingress-host."),
    service_monitor: bool = typer.Option(False, "--service-monitor", help="Add a Prometheus Operator ServiceMonitor for the monitor."),
    monitor_image: Optional[str] = typer.Option(None, "--monitor-image", help="An image with orch installed for the monitor "
                                                "[default: the pinned Python image, installing orch's few dependencies at start]."),
    pip_index_url: Optional[str] = typer.Option(None, "--pip-index-url", help="A PyPI mirror for the monitor's start-up install."),
    ollama_memory: Optional[str] = typer.Option(None, "--ollama-memory", help="Memory request per Ollama pod, e.g. 48Gi (the limit is twice it) [default: 1.2 x the GGUF + 1Gi]."),
    ollama_cpu: str = typer.Option("2", "--ollama-cpu", help="CPU request per Ollama pod (the limit is twice it)."),
    backup_schedule: Optional[str] = typer.Option(None, "--backup-schedule", help="A CronJob backing up Open WebUI's volume "
                                                  "(chats, users, keys) on this cron schedule, e.g. '0 3 * * *'."),
    backup_keep: int = typer.Option(7, "--backup-keep", help="Scheduled backups kept on their volume, with --backup-schedule."),
    backup_size: str = typer.Option("10Gi", "--backup-size", help="Size of the backups' volume, with --backup-schedule."),
    autoscale: bool = typer.Option(False, "--autoscale", help="A KEDA ScaledObject scales the Ollama replicas on the monitor's "
                                   "chat time to first token (p95); the cluster needs KEDA installed."),
    min_replicas: int = typer.Option(1, "--min-replicas", help="With --autoscale: replicas kept however quiet it is."),
    max_replicas: int = typer.Option(4, "--max-replicas", help="With --autoscale: the most replicas (checked against the cluster's GPUs at apply)."),
    ttft_target: float = typer.Option(2.0, "--ttft-target", help="With --autoscale: seconds to first token (p95) one replica should "
                                      "keep to; above it replicas are added in proportion."),
    cooldown: int = typer.Option(300, "--cooldown", help="With --autoscale: seconds the load must stay below target before a replica goes."),
    drain: int = typer.Option(120, "--drain", help="With --autoscale: seconds a leaving replica keeps serving the replies it has "
                              "begun (Ollama cuts them at SIGTERM)."),
) -> None:
    """Write the manifests and kustomization.yaml for BUILD; applies nothing.

    Examples:

      orch k8s render tiny

      orch k8s render ./builds/mybot --replicas 3 --gpu --namespace chat --dir ./k8s

      orch k8s render ./builds/mybot --gpu --autoscale --min-replicas 1 --max-replicas 4 --ttft-target 1.5
    """
    from orchestrator.errors import BadInput
    from orchestrator.stack.kubernetes import manifests, plan as planning

    out = renamed(out, old_out, new="--dir", old="--out") or Path("k8s")
    if model_volume not in ("pvc", "hostpath"):
        raise BadInput(f"--model-volume {model_volume!r} is not pvc or hostpath")
    from orchestrator import paths

    given = {k for k, v in (("--min-replicas", min_replicas != 1), ("--max-replicas", max_replicas != 4), ("--ttft-target", ttft_target != 2.0),
                             ("--cooldown", cooldown != 300), ("--drain", drain != 120)) if v}
    if given and not autoscale:
        raise BadInput(f"{', '.join(sorted(given))} {'means' if len(given) == 1 else 'mean'} something only with --autoscale: add it, "
                       "or use --replicas for a fixed count")
    scale = planning.Autoscale(min_replicas, max_replicas, ttft_target, cooldown, drain) if autoscale else None
    plan = planning.make_plan(paths.build_or_path(build), out, name=name, namespace=namespace, replicas=replicas, gpu=gpu, gpu_count=gpu_count,
                              node_selector=node_selector or [], tolerations=toleration or [], num_parallel=num_parallel,
                              model_volume=model_volume, host_path=host_path, model_url=model_url, storage_class=storage_class, host=host,
                              tls_secret=tls_secret, service_monitor=service_monitor, monitor_image=monitor_image,
                              pip_index_url=pip_index_url, ollama_memory=ollama_memory, ollama_cpu=ollama_cpu,
                              backup_schedule=backup_schedule, backup_keep=backup_keep, backup_size=backup_size, autoscale=scale)
    manifests.write(plan)
    con = render.console()
    count = (f"{scale.min_replicas} to {scale.max_replicas} Ollama replicas, scaled by KEDA to keep the first token within "
             f"{scale.ttft_target:g} s (p95)") if scale else f"{plan.replicas} Ollama replica(s)"
    con.print(f"[bold green]Rendered[/] {plan.model.name} for namespace {plan.namespace}: {count}"
              f"{f', {plan.gpu_count} GPU each' if plan.gpu else ''} into {plan.out}", soft_wrap=True)
    if scale:
        con.print("  needs KEDA in the cluster: helm install keda kedacore/keda --namespace keda --create-namespace", soft_wrap=True)
    con.print(f"  the Open WebUI Secret: {plan.out / manifests.SECRET_FILE} (0600, kept across renders)", soft_wrap=True)
    by_hand = "the pods fetch the build from --model-url" if plan.model_url else "then put the build on the model volume"
    con.print(f"  apply it: orch k8s apply --dir {plan.out}   (or kubectl apply -k {plan.out}: {by_hand})", soft_wrap=True)
    reach = (f"https://{plan.host}" if plan.tls_secret else f"http://{plan.host}") if plan.host else \
        f"kubectl -n {plan.namespace} port-forward svc/open-webui 3000:80, then http://localhost:3000"
    con.print(f"  the chat: {reach}", soft_wrap=True)


def _dir(directory: Optional[Path], positional: Optional[Path] = None) -> Path:
    """--dir, or the positional directory older scripts pass (with a note), or ./k8s."""
    chosen = renamed(directory, positional, new="--dir", old="a directory as an argument")
    return (chosen or Path("k8s")).expanduser().resolve()


@k8s.command("apply")
def apply_cmd(
    directory: Optional[Path] = typer.Option(None, "--dir", "-d", help=K8S_DIR_HELP + " [default: k8s]"),
    positional: Optional[Path] = typer.Argument(None, hidden=True),
    wait: float = typer.Option(1800, "--wait", help="Seconds to wait for the rollouts and readiness."),
) -> None:
    """Check the cluster can run DIR, apply it server-side, put the build on the model volume, and follow it to ready.

    Before applying, the cluster itself is asked: room for the Ollama pods (GPUs across replicas, CPU, memory), a
    StorageClass or volumes for every claim, and the namespace's PodSecurity level. After, claims bound, pods
    scheduled and ready show as bars; what the cluster says stands in the way (an unbound claim, an unschedulable
    pod, a PodSecurity refusal, an image that cannot be pulled) ends it in one line with the fix.

    Example: orch k8s apply --dir ./k8s
    """
    from orchestrator.stack.kubernetes.runtime import KubernetesRuntime, Rendered

    runtime = KubernetesRuntime()
    d = _dir(directory, positional)
    runtime.preflight(Rendered(d))  # before any output: no cluster is one line
    with render.RichReporter() as reporter:
        runtime.up(Rendered(d), wait=wait, reporter=reporter)
    _print_status(runtime, d)


@k8s.command("status")
def status_cmd(
    directory: Optional[Path] = typer.Option(None, "--dir", "-d", help=K8S_DIR_HELP + " [default: k8s]"),
    positional: Optional[Path] = typer.Argument(None, hidden=True),
    as_json: bool = typer.Option(False, "--json", help="Print the pods and their states as JSON."),
) -> None:
    """Pods, readiness, and which Ollama replicas serve the model (readiness asks ollama show MODEL).

    Example: orch k8s status --dir ./k8s --json
    """
    from orchestrator.stack.kubernetes.runtime import KubernetesRuntime

    _print_status(KubernetesRuntime(), _dir(directory, positional), as_json=as_json)


def _print_status(runtime, directory: Path, *, as_json: bool = False) -> None:
    states = runtime.status(directory)
    if as_json:
        render.print_json({"pods": [{"name": s.name, "state": s.state, "detail": s.detail} for s in states]})
        return
    con = render.console()
    for s in states:
        con.print(f"{s.name}: [{'green' if s.state == 'ready' else 'yellow'}]{s.state}[/], {render.escape(s.detail)}")
    if not states:
        con.print("no pod of the stack in the cluster: orch k8s apply")


@k8s.command("down")
def down_cmd(
    directory: Optional[Path] = typer.Option(None, "--dir", "-d", help=K8S_DIR_HELP + " [default: k8s]"),
    positional: Optional[Path] = typer.Argument(None, hidden=True),
    volumes: bool = typer.Option(False, "--volumes", help="Also delete the model volume, the replicas' stores and the chat data."),
) -> None:
    """Remove what orch k8s apply created (the claims, and with them models and chats, only with --volumes).

    Example: orch k8s down --dir ./k8s
    """
    from orchestrator.stack.kubernetes.runtime import KubernetesRuntime

    removed = KubernetesRuntime().down(_dir(directory, positional), volumes=volumes)
    render.console().print(f"removed {len(removed)} objects" + (", the volumes with them" if volumes else " (the volumes are kept)"))


@k8s.command("logs")
def logs_cmd(
    service: Optional[str] = typer.Argument(None, metavar="SERVICE", help="ollama, open-webui or orch-health [default: all]."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines."),
    directory: Optional[Path] = typer.Option(None, "--dir", "-d", help=K8S_DIR_HELP + " [default: k8s]"),
    old_service: Optional[str] = typer.Option(None, "--service", hidden=True),
) -> None:
    """The pods' logs, model creation included (kubectl logs), as orch logs SERVICE shows the local stack's.

    Example: orch k8s logs ollama --dir ./k8s
    """
    from orchestrator.stack.kubernetes.runtime import SERVICES, KubernetesRuntime

    positional = None
    if service is not None and service not in SERVICES and Path(service).is_dir():  # `orch k8s logs ./k8s` from before
        service, positional = None, Path(service)
    service = renamed(service, old_service, new="SERVICE", old="--service")
    for line in KubernetesRuntime().logs(_dir(directory, positional), [service] if service else None, follow=follow):
        print(line, flush=True)
