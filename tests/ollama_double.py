"""A test double of the Ollama HTTP API. It is not Ollama, and nothing it says is reported as Ollama's.

It follows ../shared/reference/ollama-api.md: version, tags, show, blobs
(HEAD, POST with a digest check), create (status stream), generate and chat
(streamed or not, with the documented final fields), ps, delete, the OpenAI
chat route and the error shapes. Its answers are real: llama.cpp runs the
registered GGUF on a prompt rendered from the registered TEMPLATE by the same
Go text/template program the chat template test uses.

Faults for the tests, set with POST /_double/fault {"kind", "delay"?, "times"?, "after"?, "path"?}
(DELETE clears): http500, html, slow_first_token, malformed_line, error_line,
cut_stream, leak_marker, upload_cut, create_error. GET /_double/stats counts what it saw.

Run: python tests/ollama_double.py --store DIR --render GO_RENDER [--port 0] [--bind 127.0.0.1] [--version V]
It prints {"port": N} on stdout once listening.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

NAME = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9_.-]*/)?[A-Za-z0-9][A-Za-z0-9_.-]*(?::[A-Za-z0-9_][A-Za-z0-9_.-]*)?$")


def full_name(name: str) -> str:
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def now() -> str:
    return datetime.now(timezone.utc).isoformat()


class Double:
    def __init__(self, store: Path, render: Path, version: str):
        self.store, self.render_bin, self.version = store, render, version
        (store / "blobs").mkdir(parents=True, exist_ok=True)
        self.models: dict[str, dict] = {}
        self.loaded: dict[str, object] = {}
        self.fault: dict | None = None
        self.stats = {"requests": [], "blob_uploads": 0, "generated_tokens": 0, "streamed": 0, "busy_s": 0.0, "chat_lengths": [], "authorization": []}
        self.registry = store / "models.json"  # survives a restart, as Ollama's manifests do
        if self.registry.is_file():
            self.models = json.loads(self.registry.read_text())
        self.lock = threading.Lock()  # one generation at a time, as one model runner would

    def save(self) -> None:
        tmp = self.registry.with_suffix(".partial")
        tmp.write_text(json.dumps(self.models))
        os.replace(tmp, self.registry)

    def blob(self, digest: str) -> Path:
        return self.store / "blobs" / digest.replace(":", "-")

    def take_fault(self, path: str, *kinds: str) -> dict | None:
        f = self.fault
        if not f or f["kind"] not in kinds or f.get("path", path) != path:
            return None
        if f.get("after"):  # let this many matching requests through first
            f["after"] -= 1
            return None
        if f.get("times") is not None:
            f["times"] -= 1
            if f["times"] <= 0:
                self.fault = None
        return f

    def render(self, model: dict, *, prompt: str | None = None, system: str | None = None, messages=None) -> str:
        """As Ollama renders: a chat's .System is its system messages (the model's SYSTEM when it has none), which
        also stay in .Messages; the Modelfile's MESSAGE lines come first."""
        req = {"template": model.get("template") or "{{ .Prompt }}", "system": system if system is not None else model.get("system") or "",
               "prompt": prompt or "", "messages": []}
        if messages is not None:
            messages = [*(model.get("messages") or []), *messages]
            if model.get("system") and not any(m["role"] == "system" for m in messages):
                messages = [{"role": "system", "content": model["system"]}, *messages]
            req["messages"] = messages
            req["system"] = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
        out = subprocess.run([str(self.render_bin)], input=json.dumps(req), capture_output=True, text=True, check=True)
        return out.stdout

    def llama(self, name: str):
        if name not in self.loaded:
            from orchestrator.builder.llamacpp.runtime import bindings

            self.loaded[name] = bindings().Llama(model_path=str(self.blob(self.models[name]["digest"])), n_ctx=512, n_threads=2,
                                      verbose=False, seed=0)
        return self.loaded[name]

    def generate(self, name: str, prompt_text: str, options: dict):
        """Yield (text piece, None) per token, then (None, final figures)."""
        model = self.models[name]
        params = model.get("parameters") or {}
        opts = params | (options or {})
        with self.lock:
            t0 = time.perf_counter_ns()
            llm = self.llama(name)
            t1 = time.perf_counter_ns()
            tokens = llm.tokenize(prompt_text.encode(), add_bos=True, special=True)
            if len(tokens) >= 512:  # this double's context; Ollama would shift or truncate, it refuses instead
                raise ValueError(f"the prompt ({len(tokens)} tokens) does not fit the double's 512-token context")
            n = min(int(opts.get("num_predict") or 128), 512 - len(tokens) - 1)
            count, reason, t_first = 0, "length", None
            for chunk in llm.create_completion(prompt=tokens, max_tokens=n, temperature=float(opts.get("temperature", 0.8)),
                                               top_k=int(opts.get("top_k", 40)), top_p=float(opts.get("top_p", 0.9)),
                                               repeat_penalty=float(opts.get("repeat_penalty", 1.1)), stop=opts.get("stop") or None,
                                               stream=True):
                choice = chunk["choices"][0]
                t_first = t_first or time.perf_counter_ns()
                if choice["text"]:
                    count += 1
                    yield choice["text"], None
                if choice.get("finish_reason"):
                    reason = choice["finish_reason"]
            t2 = time.perf_counter_ns()
            self.stats["generated_tokens"] += count
        yield None, {"done_reason": "stop" if reason == "stop" else "length", "total_duration": t2 - t0, "load_duration": t1 - t0,
                     "prompt_eval_count": len(tokens), "prompt_eval_duration": (t_first or t2) - t1, "eval_count": max(count, 1),
                     "eval_duration": max(t2 - t1, 1)}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    double: Double

    def log_message(self, *args):
        pass

    # --- plumbing --------------------------------------------------------------------------------------
    def body(self) -> dict:
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        try:
            return json.loads(raw or b"{}")
        except ValueError:
            return {"__invalid__": True}

    def send(self, code: int, payload, ctype: str = "application/json") -> None:
        data = payload if isinstance(payload, bytes) else (json.dumps(payload) if ctype == "application/json" else payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def error(self, code: int, message: str) -> None:
        self.send(code, {"error": message})

    def start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def chunk(self, obj) -> None:
        data = (obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)).encode() + b"\n"
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def cut(self) -> None:
        """Drop the connection mid-response, as a crashed server or a broken proxy would."""
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True

    def dispatch(self) -> None:
        d = self.double
        path = self.path.split("?", 1)[0]
        if not path.startswith("/_double"):
            d.stats["requests"].append([self.command, path])
            d.stats["authorization"].append(self.headers.get("Authorization"))
            if d.take_fault(path, "html"):
                self.body()
                return self.send(200, "<!DOCTYPE html><html><body><h1>Welcome to nginx!</h1></body></html>", "text/html")
            if path != "/" and (f := d.take_fault(path, "http500")):
                self.body()
                return self.error(500, f.get("error", "injected internal server error"))
        route = getattr(self, "route_" + (self.command + path.replace("/", "_").replace(".", "_")).lower().split(":")[0], None)
        if route is None and path.startswith("/api/blobs/"):
            route = self.blob_route
        if route is None:
            return self.error(404, f"{self.command} {path} not found")
        t = time.perf_counter()
        try:
            route()
        finally:
            d.stats["busy_s"] += time.perf_counter() - t

    do_GET = do_POST = do_HEAD = do_DELETE = dispatch

    # --- double control ------------------------------------------------------------------------------------
    def route_post__double_fault(self):
        self.double.fault = self.body()
        self.send(200, {"fault": self.double.fault})

    def route_delete__double_fault(self):
        self.double.fault = None
        self.send(200, {"fault": None})

    def route_get__double_stats(self):
        self.send(200, self.double.stats)

    # --- liveness and inventory -------------------------------------------------------------------------
    def route_get_(self):
        self.send(200, "Ollama is running", "text/plain; charset=utf-8")

    route_head_ = route_get_

    def route_get_api_version(self):
        self.send(200, {"version": self.double.version})

    def route_get_api_tags(self):
        self.send(200, {"models": [self.describe(n) for n in self.double.models]})

    def describe(self, name: str) -> dict:
        m = self.double.models[name]
        return {"name": name, "model": name, "modified_at": m["modified_at"], "size": m["size"], "digest": m["digest"].split(":")[1],
                "details": {"format": "gguf", "family": m["architecture"], "parameter_size": "", "quantization_level": m["file_type"]}}

    def route_post_api_show(self):
        req = self.body()
        name = self.find(req.get("model") or req.get("name"))
        if name is None:
            return
        m = self.double.models[name]
        shown = dict(m.get("parameters") or {})
        if altered := self.double.take_fault("/api/show", "alter_parameter"):  # a server that keeps another value
            shown[altered["name"]] = altered["value"]
        params = "\n".join(f"{k} {json.dumps(v) if isinstance(v, str) else v}" for k, vs in shown.items()
                           for v in (vs if isinstance(vs, list) else [vs]))
        self.send(200, {"modelfile": f"FROM {m['digest']}\n", "parameters": params, "template": m.get("template") or "{{ .Prompt }}",
                        "system": m.get("system") or "", "license": "\n".join(m.get("license") or []),
                        "messages": m.get("messages") or [],
                        "details": self.describe(name)["details"], "model_info": {"general.architecture": m["architecture"]},
                        "modified_at": m["modified_at"]})

    def route_get_api_ps(self):
        d = self.double
        until = (datetime.now(timezone.utc) + timedelta(minutes=5)).isoformat()
        share = (d.take_fault("/api/ps", "vram") or {}).get("share", 0)  # a GPU server's placement: this share in GPU memory
        self.send(200, {"models": [(m := self.describe(n)) | {"size_vram": int(m["size"] * share), "expires_at": until}
                                   for n in d.loaded]})

    def route_delete_api_delete(self):
        name = self.find(self.body().get("model"))
        if name is not None:
            self.double.models.pop(name)
            self.double.loaded.pop(name, None)
            self.double.save()
            self.send(200, {})

    def find(self, name: str | None) -> str | None:
        if not name:
            self.error(400, "model is required")
            return None
        full = full_name(name)
        if full not in self.double.models:
            self.error(404, f"model '{name}' not found")
            return None
        return full

    # --- blobs and create ----------------------------------------------------------------------------------------
    def blob_route(self):
        digest = self.path.rsplit("/", 1)[-1]
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            return self.error(400, "invalid digest format")
        target = self.double.blob(digest)
        if self.command == "HEAD":
            return self.send(200 if target.is_file() else 404, b"")
        if self.command != "POST":
            return self.error(405, "method not allowed")
        size = int(self.headers.get("Content-Length") or 0)
        cut = self.double.take_fault(self.path.split("?")[0], "upload_cut")
        h, tmp, got = hashlib.sha256(), target.with_suffix(".partial"), 0
        with open(tmp, "wb") as f:
            while got < size:
                block = self.rfile.read(min(1 << 20, size - got))
                if not block:
                    break
                h.update(block)
                f.write(block)
                got += len(block)
                if cut and got >= size // 2:
                    tmp.unlink()
                    return self.cut()
        if got != size or f"sha256:{h.hexdigest()}" != digest:
            tmp.unlink()
            return self.error(400, "digest mismatch, expected \"%s\", got \"sha256:%s\"" % (digest, h.hexdigest()))
        os.replace(tmp, target)
        self.double.stats["blob_uploads"] += 1
        self.send(201, b"")

    def route_post_api_create(self):
        req = self.body()
        name = req.get("model") or ""
        if not NAME.match(name):
            return self.error(400, f"invalid model name {name!r}")
        files = req.get("files") or {}
        ggufs = [(f, d) for f, d in files.items() if f.endswith(".gguf")]
        if len(ggufs) != 1:
            return self.error(400, "files must name exactly one .gguf")
        digest = ggufs[0][1]
        if not self.double.blob(digest).is_file():
            return self.error(400, f"blob {digest} not found: upload it first")
        stream = req.get("stream", True)
        if stream:
            self.start_stream()
            self.chunk({"status": "parsing GGUF"})
            if self.double.take_fault("/api/create", "create_error"):
                self.chunk({"error": "unsupported model architecture (injected)"})
                return self.end_stream()
        arch, ftype = gguf_facts(self.double.blob(digest))
        self.double.models[full_name(name)] = {
            "digest": digest, "template": req.get("template"), "system": req.get("system"),
            "parameters": req.get("parameters") or {}, "license": _as_list(req.get("license")), "messages": req.get("messages") or [],
            "modified_at": now(), "size": self.double.blob(digest).stat().st_size, "architecture": arch, "file_type": ftype}
        self.double.loaded.pop(full_name(name), None)
        self.double.save()
        if not stream:
            return self.send(200, {"status": "success"})
        self.chunk({"status": f"using existing layer {digest}"})
        self.chunk({"status": "writing manifest"})
        self.chunk({"status": "success"})
        self.end_stream()

    # --- generation ------------------------------------------------------------------------------------------------
    def route_post_api_generate(self):
        req = self.body()
        name = self.find(req.get("model"))
        if name is None:
            return
        if not req.get("prompt"):
            return self.send(200, {"model": name, "created_at": now(), "response": "", "done": True, "done_reason": "load"})
        m = self.double.models[name]
        text = req["prompt"] if req.get("raw") else self.double.render(m, prompt=req["prompt"], system=req.get("system"))
        self.answer(name, text, req, lambda piece: {"response": piece})

    def chat_request(self) -> tuple[dict, str, str] | None:
        """The request, the model and its prompt rendered from the conversation; None once an error is sent."""
        req = self.body()
        name = self.find(req.get("model"))
        if name is None:
            return None
        messages = [{"role": m.get("role", "user"), "content": m.get("content", "")} for m in req.get("messages") or []]
        self.double.stats["chat_lengths"].append(len(messages))
        return req, name, self.double.render(self.double.models[name], messages=messages)

    def collect(self, name: str, text: str, options: dict) -> tuple[str, dict]:
        parts, final = [], {}
        for piece, fin in self.double.generate(name, text, options):
            parts.append(piece or "")
            final = fin or final
        return "".join(parts), final

    def route_post_api_chat(self):
        if (got := self.chat_request()) is not None:
            req, name, text = got
            self.answer(name, text, req, lambda piece: {"message": {"role": "assistant", "content": piece}})

    def answer(self, name: str, prompt_text: str, req: dict, shape) -> None:
        d = self.double
        base = {"model": name}
        if not req.get("stream", True):
            reply, final = self.collect(name, prompt_text, req.get("options") or {})
            return self.send(200, base | {"created_at": now()} | shape(reply) | {"done": True} | final)
        path = self.path.split("?")[0]
        slow = d.take_fault(path, "slow_first_token")
        bad = d.take_fault(path, "malformed_line", "error_line", "cut_stream", "leak_marker")
        d.stats["streamed"] += 1
        self.start_stream()
        if slow:
            time.sleep(float(slow.get("delay", 5)))
        sent = 0
        for piece, fin in d.generate(name, prompt_text, req.get("options") or {}):
            if bad and sent == 2:
                if bad["kind"] == "malformed_line":
                    self.chunk('{"model": "' + name + '", "response": "trunc')
                elif bad["kind"] == "error_line":
                    self.chunk({"error": "an error was encountered while running the model (injected)"})
                if bad["kind"] == "leak_marker":
                    self.chunk(base | {"created_at": now()} | shape("<reserved_106>") | {"done": False})
                    bad = None
                else:
                    return self.end_stream()
            if fin is not None:
                self.chunk(base | {"created_at": now()} | shape("") | {"done": True} | fin)
            else:
                self.chunk(base | {"created_at": now()} | shape(piece) | {"done": False})
                sent += 1
        self.end_stream()

    def route_post_v1_chat_completions(self):
        if (got := self.chat_request()) is None:
            return
        req, name, text = got
        reply, fin = self.collect(name, text, {"num_predict": req.get("max_tokens") or 16, "temperature": req.get("temperature", 0.8)})
        self.send(200, {"id": "chatcmpl-double", "object": "chat.completion", "created": int(time.time()), "model": name,
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                                     "finish_reason": fin.get("done_reason", "stop")}],
                        "usage": {"prompt_tokens": fin.get("prompt_eval_count", 0), "completion_tokens": fin.get("eval_count", 0),
                                  "total_tokens": fin.get("prompt_eval_count", 0) + fin.get("eval_count", 0)}})

    def route_get_v1_models(self):
        self.send(200, {"object": "list", "data": [{"id": n, "object": "model", "owned_by": "library"} for n in self.double.models]})


def gguf_facts(path: Path) -> tuple[str, str]:
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    arch = reader.fields["general.architecture"]
    ftype = reader.fields.get("general.file_type")
    return (bytes(arch.parts[arch.data[0]]).decode(), str(int(ftype.parts[ftype.data[0]][0])) if ftype else "unknown")


def _as_list(value) -> list:
    return [] if value is None else value if isinstance(value, list) else [value]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--render", type=Path, required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--bind", default="127.0.0.1")
    p.add_argument("--version", default="0.40.2-double")
    args = p.parse_args()
    Handler.double = Double(args.store, args.render, args.version)
    server = ThreadingHTTPServer((args.bind, args.port), Handler)
    server.daemon_threads = True
    print(json.dumps({"port": server.server_address[1]}), flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
