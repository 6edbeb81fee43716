"""Run llama.cpp's `convert_hf_to_gguf.py` with orch's Baichuan fixes applied in memory.

Run as `python -m orchestrator.builder.llamacpp.shim --llama-cpp DIR [options] -- CONVERTER ARGS`.
The provisioned tree is never edited. Four changes, each as small as it can be:

1. crash: `BaichuanModel.modify_tensors` calls itself for every tensor other
   than W_pack (RecursionError); the call meant is the base class's.
2. chat markers: SentencePiece user-defined pieces are written as NORMAL
   tokens, which llama.cpp then splits into a dozen pieces even with special
   parsing on; the marker ids (and only they) are typed CONTROL.
3. space prefix: upstream never writes `tokenizer.ggml.add_space_prefix` for
   Baichuan, so llama.cpp assumes SentencePiece's dummy prefix and puts a "▁"
   before the first text and after every marker; the flag is written as the
   tokenizer.model says (False for Baichuan 2's, True for a dummy-prefix one).
4. NormHead: `lm_head.weight` is row-normalised as it streams through.

And two for memory: the two vocabulary-sized tensors are converted a block
of rows at a time as they are written (rows_in_chunks), never whole in
float32; and the checkpoint is memory-mapped, so every page the converter
has read stays in its resident set until the end: pages of tensors already
written are handed back as the output grows (see release_source_pages).

The report (--report) says what upstream did before each fix, so a test
notices the day a llama.cpp release makes a fix stale.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path

from orchestrator.builder.sentencepiece_model import SentencePieceModel


def _parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    if "--" not in argv:
        raise SystemExit("usage: python -m orchestrator.builder.llamacpp.shim --llama-cpp DIR [options] -- CONVERTER ARGS")
    split = argv.index("--")
    p = argparse.ArgumentParser(prog="orchestrator.builder.llamacpp.shim")
    p.add_argument("--llama-cpp", type=Path, required=True)
    p.add_argument("--report", type=Path)
    p.add_argument("--normhead", action="store_true", help="row-normalise lm_head.weight (Baichuan 2)")
    p.add_argument("--generation", type=int, choices=(1, 2), help="the Baichuan generation, recorded in the GGUF for orch inspect")
    p.add_argument("--control-token", type=int, action="append", default=[], help="token id to type CONTROL")
    p.add_argument("--no-fixes", action="store_true", help="run upstream untouched (tests use it to prove the fixes are needed)")
    p.add_argument("--adapter", type=Path, help="a PEFT LoRA adapter directory to merge into the weights as they stream")
    p.add_argument("--chunk-rows", type=int, help="rows per chunk of the vocabulary-sized tensors [default: 64 MiB of float32]")
    p.add_argument("--crash-fix-only", action="store_true", help="fix only the crash: upstream as it would be without its bug "
                   "(the benchmark's baseline)")
    return p.parse_args(argv[:split]), argv[split + 1:]


# the two vocabulary-sized tensors (125696 rows): 2 GB each in float32 at 7B, the largest anything holds in memory
CHUNKED = ("model.embed_tokens.weight", "lm_head.weight")
CHUNK_BYTES = 64 << 20


def rows_in_chunks(model, name: str, *, normalize: bool, rows_per_chunk: int | None = None):
    """The tensor as gguf's LazyChunkedTensor: read, widened to float32 (and row-normalised) and written a block of rows at a time.

    Rows are independent (NormHead normalises each on its own), so the result
    is the same as converting the whole tensor, without ever holding it: the
    source rows stay memory-mapped. None when this llama.cpp tree lacks the
    chunked writer or the source index, and the tensor goes the usual way.
    """
    import gguf
    import numpy as np
    import torch

    tensors = getattr(model, "model_tensors", None)
    if not hasattr(gguf, "LazyChunkedTensor") or not tensors or name not in tensors:
        return None
    from conversion.base import LazyTorchTensor

    shape = tuple(tensors[name]().shape)
    if len(shape) != 2:
        return None
    step = rows_per_chunk or max(1, CHUNK_BYTES // (shape[1] * 4))

    def load(lo: int, hi: int):
        def chunk() -> np.ndarray:
            rows = LazyTorchTensor.to_eager(tensors[name]())[lo:hi]  # a view of the mapped checkpoint: no copy yet
            if normalize:
                from orchestrator.builder.normhead import normalize_rows

                return normalize_rows(rows).numpy()
            return rows.to(torch.float32).numpy()
        return chunk

    return gguf.LazyChunkedTensor([load(lo, min(lo + step, shape[0])) for lo in range(0, shape[0], step)], shape=shape, dtype=np.float32)


def has_recursion_bug(model_cls) -> bool:
    """True while upstream's Baichuan `modify_tensors` still calls itself instead of the base class."""
    return "self.modify_tensors(" in inspect.getsource(model_cls.modify_tensors)


def apply_fixes(model_cls, token_types, *, normhead: bool, control_ids: list[int], report: dict, crash_only: bool = False,
                chunk_rows: int | None = None, factors=None, generation: int | None = None) -> None:
    upstream_modify = model_cls.modify_tensors
    recursion_bug = has_recursion_bug(model_cls)
    report["upstream_recursion_bug"] = recursion_bug

    def modify_tensors(self, data_torch, name, bid):
        if factors is not None and (delta := factors.delta(name)) is not None:
            # the LoRA delta, merged before anything else touches the weight (NormHead included): one weight in memory at a time
            import torch
            from conversion.base import LazyTorchTensor

            data_torch = LazyTorchTensor.to_eager(data_torch).to(torch.float32).add_(delta)
            report["adapter_merged"] = report.get("adapter_merged", 0) + 1
        normalize = normhead and name == "lm_head.weight"
        if not crash_only and name in CHUNKED and (chunked := rows_in_chunks(self, name, normalize=normalize, rows_per_chunk=chunk_rows)):
            report["normhead_applied"] |= normalize
            report.setdefault("chunked_tensors", []).append(name)
            yield self.map_tensor_name(name), chunked
            return
        if normhead and name == "lm_head.weight":
            from orchestrator.builder.normhead import normalize_rows

            data_torch = normalize_rows(data_torch)
            report["normhead_applied"] = True
        if not recursion_bug or (bid is not None and name == f"model.layers.{bid}.self_attn.W_pack.weight"):
            yield from upstream_modify(self, data_torch, name, bid)
        else:
            yield from super(model_cls, self).modify_tensors(data_torch, name, bid)

    model_cls.modify_tensors = modify_tensors
    if crash_only:
        return

    upstream_vocab = model_cls._create_vocab_sentencepiece

    def create_vocab(self):
        tokens, scores, toktypes = upstream_vocab(self)
        before = {}
        for tid in control_ids:
            if not 0 <= tid < len(toktypes):
                raise SystemExit(f"control token id {tid} is outside the vocabulary of {len(toktypes)} tokens")
            before[str(tid)] = {"piece": tokens[tid].decode("utf-8", "replace"), "type": token_types(toktypes[tid]).name}
            toktypes[tid] = token_types.CONTROL
        self._orch_pieces = [tokens[tid] for tid in control_ids]
        report["upstream_marker_types"] = before
        return tokens, scores, toktypes

    model_cls._create_vocab_sentencepiece = create_vocab

    upstream_set_vocab = model_cls.set_vocab

    def set_vocab(self):
        upstream_set_vocab(self)
        key = "tokenizer.ggml.add_space_prefix"
        written = [kv[key].value for kv in self.gguf_writer.kv_data if key in kv]
        report["upstream_add_space_prefix"] = written[0] if written else None
        dummy_prefix = SentencePieceModel.read(self.dir_model / "tokenizer.model").add_dummy_prefix
        report["tokenizer_adds_dummy_prefix"] = dummy_prefix
        # llama.cpp puts "▁" before every text fragment after a special token when this is true: it must say what the tokenizer does
        self.gguf_writer.remove_key(key)
        self.gguf_writer.add_add_space_prefix(dummy_prefix)
        record_facts(self.gguf_writer, generation=generation, normhead=normhead, dummy_prefix=dummy_prefix, markers=control_ids)
        if len(control_ids) == 2 and not any("tokenizer.chat_template" in kv for kv in self.gguf_writer.kv_data):
            pieces = [p.decode("utf-8") for p in (getattr(self, "_orch_pieces", None) or [])]
            if len(pieces) == 2:
                self.gguf_writer.add_chat_template(chat_template(*pieces))
                report["chat_template_written"] = True

    model_cls.set_vocab = set_vocab


def chat_template(user: str, assistant: str) -> str:
    """Baichuan2's prompt as a Jinja chat template, for tools that read the GGUF's own (llama.cpp's server, LM Studio).

    The same turns as the Modelfile's Go template: the system text, each turn
    opened by its marker, nothing between turns, the assistant marker to
    ask for a reply.
    """
    return ("{%- for message in messages -%}"
            "{%- if message['role'] == 'system' -%}{{ message['content'] }}"
            f"{{%- elif message['role'] == 'user' -%}}{user}{{{{ message['content'] }}}}"
            f"{{%- elif message['role'] == 'assistant' -%}}{assistant}{{{{ message['content'] }}}}"
            "{%- endif -%}{%- endfor -%}"
            f"{{%- if add_generation_prompt and messages[-1]['role'] != 'assistant' -%}}{assistant}{{%- endif -%}}")


def record_facts(writer, *, generation: int | None, normhead: bool, dummy_prefix: bool, markers: list[int]) -> None:
    """What orch knew about the model, in the GGUF itself, so that orch inspect can judge it later without the checkpoint."""
    from orchestrator import __version__

    writer.add_string("orch.version", __version__)
    if generation is not None:
        writer.add_uint32("orch.baichuan.generation", generation)
    writer.add_bool("orch.normhead", normhead)
    writer.add_bool("orch.tokenizer.add_dummy_prefix", dummy_prefix)
    if markers:
        writer.add_array("orch.chat.marker_ids", list(markers))


RELEASE_EVERY = 32 << 20
MADV_PAGEOUT = 21


def release_source_pages(sources: set[str]) -> int:
    """Ask the kernel to page out this process's mappings of the checkpoint files; return the bytes of address space advised.

    MADV_PAGEOUT reclaims clean pages (they come back from the file if read
    again) and never discards data, so a mapping written to stays correct.
    /proc/self/maps finds the mappings (smaps would walk every page table and
    cost seconds). A no-op where /proc or MADV_PAGEOUT (Linux 5.4) is absent.
    madvise through ctypes: the mmap module only advises mappings it made
    itself, and these are torch's or numpy's.
    """
    import ctypes

    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    advised = 0
    for line in maps.splitlines():
        fields = line.split(None, 5)
        if len(fields) == 6 and fields[5].strip() in sources:
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            if libc.madvise(lo, hi - lo, MADV_PAGEOUT) == 0:
                advised += hi - lo
    return advised


def release_pages_while_writing(writer_cls, model_dir: Path) -> None:
    """After every RELEASE_EVERY bytes of tensors written, release the source pages read for them."""
    sources = {str(p.resolve()) for p in model_dir.iterdir() if p.suffix in (".bin", ".safetensors")}
    upstream_padding = writer_cls.write_padding
    written = [0]

    def write_padding(self, fp, n, *args, **kwargs):
        upstream_padding(self, fp, n, *args, **kwargs)
        written[0] += n
        if written[0] >= RELEASE_EVERY:
            written[0] = 0
            release_source_pages(sources)

    writer_cls.write_padding = write_padding


def main(argv: list[str] | None = None) -> None:
    args, converter_args = _parse(sys.argv[1:] if argv is None else argv)
    root = args.llama_cpp.resolve()
    sys.path.insert(0, str(root))
    sys.argv = [str(root / "convert_hf_to_gguf.py"), *converter_args]
    import convert_hf_to_gguf as upstream  # noqa: PLC0415 (the provisioned tree is only on sys.path now)
    import gguf
    from conversion import base
    from conversion.baichuan import BaichuanModel

    report: dict = {"normhead_requested": args.normhead, "normhead_applied": False, "fixes": not args.no_fixes}
    factors = None
    if args.adapter is not None:
        from orchestrator.builder import adapter

        factors = adapter.Factors(adapter.read(args.adapter, base_shapes=None))
    if not args.no_fixes:
        apply_fixes(BaichuanModel, base.SentencePieceTokenTypes, normhead=args.normhead, factors=factors, generation=args.generation,
                    control_ids=args.control_token, report=report, crash_only=args.crash_fix_only, chunk_rows=args.chunk_rows)
    if not args.no_fixes and not args.crash_fix_only:
        release_pages_while_writing(gguf.GGUFWriter, Path(converter_args[0]))
    upstream.main()
    if args.report:
        args.report.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
