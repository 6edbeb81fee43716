"""orch models, orch build, orch inspect."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from orchestrator.cli import app, render, renamed

HOST_HELP = "Ollama server URL [default: $OLLAMA_HOST, else the stack orch up started, else http://127.0.0.1:11434]."


def stack_host(host: str | None) -> str | None:
    """--host, else $OLLAMA_HOST, else where the default stack's Ollama answers (orch up --ollama-port), else the default."""
    if host is not None:
        return host
    from orchestrator.stack.lifecycle import default_ollama_url

    return default_ollama_url()


@app.command()
def models(as_json: bool = typer.Option(False, "--json", help="Print the catalog as JSON.")) -> None:
    """List the models orch can build by name, with sizes and sources.

    Example: orch models
    """
    from orchestrator.builder.catalog import CATALOG

    rows = [e.row() for e in CATALOG.values()]
    if as_json:
        render.print_json(rows)
        return
    from rich import box
    from rich.table import Table

    con = render.console()
    wide = con.width >= 112  # the repo column beside the sizes; on a narrower terminal, under the table
    table = Table(title="orch models  (GGUF sizes are estimates)", title_justify="left", box=box.SIMPLE_HEAD)
    for col, just in (("name", "left"), ("params", "right"), ("kind", "left"), ("graph", "left"), ("q4_K_M", "right"),
                      ("q8_0", "right"), ("f16", "right")):
        table.add_column(col, justify=just, no_wrap=True, min_width=len("28.6 GB") if just == "right" else None)
    repo_head = "repo (Hugging Face, ModelScope)"
    if wide:
        table.add_column(repo_head, overflow="fold", min_width=12)
    repos = {}
    for r in rows:
        sizes = ["<0.1 GB" if r[k] < 0.1 else f"{r[k]} GB" for k in ("q4_K_M_gb", "q8_0_gb", "f16_gb")]
        repos[r["name"]] = " / ".join(sorted({r["huggingface"], r["modelscope"]} - {None})) or "generated locally"
        params = f"{r['params_b']}B" if r["params_b"] >= 1 else f"{r['params_b'] * 1000:.0f}M"
        table.add_row(r["name"], params, r["kind"], f"{r['layers']}L {r['positions']}", *sizes, *([repos[r["name"]]] if wide else []))
    con.print(table)
    if not wide:
        under = Table(box=box.SIMPLE_HEAD, show_edge=False)
        under.add_column("name", no_wrap=True)
        under.add_column(repo_head, overflow="fold")
        for name, repo in repos.items():
            under.add_row(name, repo)
        con.print(under)


@app.command()
def build(
    source: str = typer.Argument(..., metavar="SOURCE", help="A catalog name (orch models), a Hugging Face repo id, or a local checkpoint directory."),
    hub: str = typer.Option("hf", "--source", help="Where a catalog name or repo id is fetched from: hf or modelscope."),
    revision: Optional[str] = typer.Option(None, "--revision", help="A branch, tag or commit of the hub repo."),
    quant: str = typer.Option("q4_K_M", "--quant", "-q", help="Comma-separated output types: f16, bf16, f32, q8_0, q6_K, q5_K_M, q4_K_M, …"),
    output: Optional[Path] = typer.Option(None, "--dir", "-d", help="Build directory [default: ~/.local/share/orch/builds/NAME, or $XDG_DATA_HOME/orch/builds/NAME]."),
    old_output: Optional[Path] = typer.Option(None, "--output", "-o", hidden=True),
    name: Optional[str] = typer.Option(None, "--name", help="Ollama model name NAME[:TAG] for the first type (others get a type tag)."),
    system: Optional[str] = typer.Option(None, "--system", help="A system prompt to put in the Modelfile."),
    no_register: bool = typer.Option(False, "--no-register", help="Do not hand the model to Ollama."),
    host: Optional[str] = typer.Option(None, "--host", help=HOST_HELP),
    force: bool = typer.Option(False, "--force", help="Rebuild every stage, even those already done."),
    adapter: Optional[str] = typer.Option(None, "--adapter", help="A PEFT LoRA adapter (a directory, or a repo id on --source) "
                                          "merged into the weights: Baichuan2's fine-tune script makes these."),
    no_eval: bool = typer.Option(False, "--no-eval", help="Skip the quality report (KL divergence, top-1 agreement, perplexity)."),
    eval_tokens: int = typer.Option(512, "--eval-tokens", help="Tokens of orch's calibration text the quality report reads."),
    min_top1: Optional[float] = typer.Option(None, "--min-top1", help="Fail the build when a type's top-1 agreement with the "
                                             "unquantized model is below this share, e.g. 0.9."),
    imatrix: Optional[str] = typer.Option(None, "--imatrix", metavar="[FILE]", help="Quantize with an importance matrix: alone, "
                                          "computed on orch's calibration text with llama.cpp's own tool (built once); or FILE, one "
                                          "made by llama-imatrix. Needed by the i-quants (iq4_xs, iq3_m, …)."),
    llama_cpp: Optional[Path] = typer.Option(None, "--llama-cpp", help="A llama.cpp tree to take the converter from [default: the pinned release, fetched once via pip; or $ORCH_LLAMA_CPP]."),
    as_json: bool = typer.Option(False, "--json", help="Print a machine-readable summary on stdout (progress goes to stderr)."),
) -> None:
    """Build a verified GGUF, a Modelfile per type, and build.json; register with Ollama when one answers.

    Every stage is resumable: run the same command again after an interruption.

    Examples:

      orch build tiny

      orch build baichuan2-7b-chat

      orch build baichuan2-13b-chat --source modelscope --quant q4_K_M,q8_0

      orch build ./my-finetuned-baichuan2 --name mybot:v1 --dir ./builds/mybot

      orch build baichuan2-7b-chat --adapter ./output/checkpoint-1000 --name mybot:v1

      orch build baichuan2-13b-chat --quant q4_K_M,iq4_xs --imatrix --min-top1 0.9
    """
    from orchestrator.builder import catalog, pipeline
    from orchestrator.builder.plan import make_plan

    output = renamed(output, old_output, new="--dir", old="--output")
    src = catalog.resolve(source, hub=hub, revision=revision)
    plan = make_plan(src, quant=quant, output=output, name=name, system=system, force=force, llama_cpp=llama_cpp, adapter=adapter,
                     evaluate=not no_eval, eval_tokens=eval_tokens, min_top1=min_top1, imatrix=imatrix)
    try:
        with render.RichReporter(quiet=as_json) as reporter:
            record = pipeline.run_build(plan, reporter)
            if not no_register:
                from orchestrator.ollama.register import register_build

                record["registration"] = [r.as_dict() for r in register_build(plan.output, stack_host(host), reporter=reporter)]
                pipeline.write_record(plan.output, record)
    except KeyboardInterrupt:
        render.console(stderr=True).print("interrupted: run the same command again to resume")
        raise typer.Exit(130) from None
    if as_json:
        render.print_json(record | {"output": str(plan.output)})
    else:
        _summary(plan, record)
    if any(r["status"] == "failed" for r in record.get("registration", [])):
        raise typer.Exit(1)


def _summary(plan, record: dict) -> None:
    from rich.table import Table

    con = render.console()
    m = record["model"]
    con.print(f"\n[bold green]Built[/] {plan.stem}: Baichuan {m['generation']} "
              f"({m['layers']} layers, {m['positions']}, NormHead {'applied' if m['normhead'] else 'not used'}), "
              f"{'chat' if m['chat'] else 'base'} model")
    if plan.source.kind == "tiny":
        from orchestrator.builder.catalog import TINY_IS_A_DEMO

        con.print(f"[yellow]tiny is {TINY_IS_A_DEMO}.[/] Build a real one with: orch build baichuan2-7b-chat", soft_wrap=True)
    table = Table(show_edge=False)
    for col in ("type", "file", "size", "sha256", "verified"):
        table.add_column(col, justify="right" if col == "size" else "left", no_wrap=col != "file")
    for a in record["artifacts"]:
        v = a["verify"]
        table.add_row(a["type"], a["file"], f"{a['size'] / 1e6:.1f} MB", a["sha256"][:12],
                      f"{'markers ok, ' if v['markers'] else ''}{v['generated_tokens']} tokens")
    con.print(table)
    if "quality" in record:
        _quality_table(con, record)
    con.print(f"Directory: {plan.output}  (build.json records sources, hashes, llama.cpp version and timings)")
    if plan.base_gguf.parent == plan.work and plan.base_gguf.is_file():
        from rich.filesize import decimal

        con.print(f"Kept for another --quant list: {plan.base_gguf} ({decimal(plan.base_gguf.stat().st_size)}); "
                  f"deleting {plan.work} frees it", soft_wrap=True)
    if record.get("resumed_stages"):
        con.print(f"Already done, skipped: {', '.join(record['resumed_stages'])}")
    for r in record.get("registration", []):
        render.registration(con, r)
    if "registration" not in record:
        for a in record["artifacts"]:
            con.print(f"Register later: ollama create {a['ollama_name']} -f {plan.output / a['modelfile']}", soft_wrap=True)


def _quality_table(con, record: dict) -> None:
    from rich.table import Table

    c = record["quality"]
    table = Table(title=f"Quality against the unquantized {c['reference']} ({c['tokens']} tokens of orch's calibration text, "
                  "Chinese and English)", title_justify="left", show_edge=False)
    for col in ("type", "top-1 agreement", "KL divergence", "perplexity"):
        table.add_column(col, justify="left" if col == "type" else "right")
    measured = [a for a in record["artifacts"] if a.get("quality")]
    table.add_row(c["reference"], "reference", "0", f"{measured[0]['quality']['perplexity_unquantized']:.2f}")
    for a in measured:
        q = a["quality"]
        table.add_row(a["type"], f"{q['top1_agreement']:.1%}", f"{q['kl_divergence']:.4f}", f"{q['perplexity']:.2f}")
        if w := q.get("without_imatrix"):
            table.add_row(f"  {a['type']} without imatrix", f"{w['top1_agreement']:.1%}", f"{w['kl_divergence']:.4f}",
                          f"{w['perplexity']:.2f}")
    con.print(table)


@app.command("inspect")
def inspect_cmd(
    gguf: Path = typer.Argument(..., metavar="GGUF", help="A .gguf file, orch's or anyone's."),
    check: bool = typer.Option(False, "--check", help="Exit 1 when any verdict fails (for scripts)."),
    generation: Optional[int] = typer.Option(None, "--generation", min=1, max=2, help="Baichuan 1 or 2, when the GGUF cannot tell."),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help="The model's tokenizer.model, to judge the space prefix by."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show what a GGUF holds and judge a Baichuan one: NormHead, chat markers, space prefix, position encoding, template.

    Examples:

      orch inspect ./builds/mybot/mybot.Q4_K_M.gguf

      orch inspect ~/Downloads/baichuan2-13b-chat.Q4_K_M.gguf --check
    """
    from orchestrator.builder.gguf_check import as_dicts, inspect_gguf, open_gguf, verdicts

    reader = open_gguf(gguf)
    info = inspect_gguf(reader)
    judged = verdicts(reader, generation=generation, tokenizer=tokenizer) if info["architecture"] == "baichuan" else []
    failed = any(v.status == "fail" for v in judged)
    if as_json:
        render.print_json(info | {"verdicts": as_dicts(judged)})
    else:
        from rich.table import Table

        table = Table(show_header=False, show_edge=False)
        for key, value in info.items():
            if key == "size":
                value = f"{value / 1e6:.1f} MB ({value} bytes)"
            elif key == "chat_markers":
                value = ", ".join(f"{k} = {v}" for k, v in value.items()) or "none (a base model, or markers not typed CONTROL)"
            table.add_row(key.replace("_", " "), render.escape(str(value)))
        con = render.console()
        con.print(table)
        if judged:
            verdict_table = Table(title="Verdict", title_justify="left", show_edge=False)
            verdict_table.add_column("check")
            verdict_table.add_column("")
            verdict_table.add_column("why", overflow="fold")
            colour = {"pass": "green", "fail": "red", "warn": "yellow", "unknown": "yellow"}
            for v in judged:
                verdict_table.add_row(v.check, f"[{colour[v.status]}]{v.status}[/]", render.escape(v.detail))
            con.print(verdict_table)
    if check and failed:
        raise typer.Exit(1)
