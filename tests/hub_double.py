"""Loopback doubles of the Hugging Face Hub (as HF_ENDPOINT mirrors are) and of ModelScope (MODELSCOPE_ENDPOINT).

They are not the hubs. They answer the routes the real `huggingface_hub` and
`modelscope_hub` clients ask for (../shared/reference/hub-doubles.md), for
repos made from local directories, with faults a test can set:
  - corrupt: serve bytes that differ from the sha256 the listing publishes (64 flipped at "start" or in the "middle");
  - cut: end a file's body halfway through what was asked, `times` times in a row;
  - broken: end a file's body before its first byte, every time (until removed).
Every request, and every file body served with its Range header, is recorded for the tests to read.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

LFS_SUFFIXES = (".bin", ".safetensors", ".model")


@dataclass
class Repo:
    files: dict[str, bytes]
    commit: str
    branches: dict[str, str] = field(default_factory=dict)  # branch or tag -> commit

    @classmethod
    def from_directory(cls, directory: Path, commit_seed: str = "") -> "Repo":
        files = {p.name: p.read_bytes() for p in sorted(Path(directory).iterdir()) if p.is_file()}
        commit = hashlib.sha1((commit_seed + "".join(sorted(files))).encode()).hexdigest()
        return cls(files, commit, {"main": commit, "master": commit})

    def resolve(self, revision: str | None) -> str | None:
        revision = revision or "main"
        return revision if revision == self.commit else self.branches.get(revision)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubDouble:
    """Both doubles on one loopback port: HF routes under /api/models and /{repo}/resolve, ModelScope's under /api/v1."""

    def __init__(self):
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        self.bodies: list[tuple[str, str | None]] = []  # (file, Range header) of every file body served
        self.corrupt: dict[str, str] = {}
        self.cut: dict[str, int] = {}
        self.broken: set[str] = set()
        self.lock = threading.Lock()
        double = self

        class Handler(_Handler):
            hub = double

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> "HubDouble":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add(self, repo_id: str, directory: Path) -> Repo:
        self.repos[repo_id] = Repo.from_directory(directory, repo_id)
        return self.repos[repo_id]

    def body(self, name: str, data: bytes) -> bytes:
        """What is served for a file: its bytes, or other bytes of the same size when it is set corrupt."""
        if name not in self.corrupt:
            return data
        at = 0 if self.corrupt[name] == "start" else len(data) // 2
        return data[:at] + bytes(b ^ 0xFF for b in data[at:at + 64]) + data[at + 64:]

    def gets(self, name: str) -> list[str | None]:
        """The Range header of each GET of a file's body, in order (None: from the start)."""
        return [rng for served, rng in self.bodies if served == name]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: HubDouble

    def log_message(self, *args):
        pass

    # --- plumbing -----------------------------------------------------------------------------------------------
    def send_json(self, code: int, obj, headers: dict | None = None) -> None:
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def not_found(self, code: str, message: str) -> None:
        self.send_json(404, {"error": message, "Code": 404, "Message": message}, {"X-Error-Code": code, "X-Error-Message": message})

    def send_file(self, name: str, data: bytes, headers: dict) -> None:
        """A file body, honouring Range, and cut halfway while a cut fault for it lasts."""
        hub = self.hub
        data = hub.body(name, data)
        start, status = 0, 200
        rng = self.headers.get("Range")
        if rng and (m := re.match(r"bytes=(\d+)-", rng)):
            start, status = int(m.group(1)), 206
        part = data[start:]
        self.send_response(status)
        self.send_header("Content-Length", str(len(part)))
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command == "HEAD":
            return
        hub.bodies.append((name, rng))
        with hub.lock:
            cut = hub.cut.get(name, 0) > 0
            if cut:
                hub.cut[name] -= 1
        if cut or name in hub.broken:
            self.wfile.write(part[: len(part) // 2] if cut else b"")
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(part)

    def handle_one(self) -> None:
        url = urlparse(self.path)
        path, query = unquote(url.path), {k: v[-1] for k, v in parse_qs(url.query).items()}
        self.hub.requests.append((self.command, self.path, self.headers.get("Range")))
        if path.startswith("/api/v1/"):
            return self.modelscope(path[len("/api/v1"):], query)
        return self.huggingface(path, query)

    do_GET = do_HEAD = handle_one

    # --- Hugging Face ----------------------------------------------------------------------------------------------
    def huggingface(self, path: str, query: dict) -> None:
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/(.+))?", path):
            return self.hf_info(m.group(1), m.group(2))
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/.*)?", path):
            return self.hf_tree(m.group(1), m.group(2))
        if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
            return self.hf_resolve(m.group(1), m.group(2), m.group(3))
        return self.not_found("EntryNotFound", f"{path} not served by the hub double")

    def hf_repo(self, repo_id: str, revision: str | None) -> tuple[Repo, str] | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self.not_found("RepoNotFound", "Repository not found")
            return None
        commit = repo.resolve(revision)
        if commit is None:
            self.not_found("RevisionNotFound", f"Invalid rev id: {revision}")
            return None
        return repo, commit

    def hf_info(self, repo_id: str, revision: str | None) -> None:
        if (found := self.hf_repo(repo_id, revision)) is None:
            return
        repo, commit = found
        siblings = []
        for name, data in repo.files.items():
            entry = {"rfilename": name, "size": len(data), "blobId": git_blob_id(data)}
            if name.endswith(LFS_SUFFIXES):
                entry["lfs"] = {"sha256": sha256(data), "size": len(data), "pointerSize": 134}
            siblings.append(entry)
        self.send_json(200, {"id": repo_id, "modelId": repo_id, "sha": commit, "private": False, "gated": False,
                             "disabled": False, "tags": [], "siblings": siblings})

    def hf_tree(self, repo_id: str, revision: str) -> None:
        if (found := self.hf_repo(repo_id, revision)) is None:
            return
        repo, _ = found
        out = []
        for name, data in repo.files.items():
            entry = {"type": "file", "path": name, "size": len(data), "oid": git_blob_id(data)}
            if name.endswith(LFS_SUFFIXES):
                entry["lfs"] = {"oid": sha256(data), "size": len(data), "pointerSize": 134}
            out.append(entry)
        self.send_json(200, out)

    def hf_resolve(self, repo_id: str, revision: str, name: str) -> None:
        if (found := self.hf_repo(repo_id, revision)) is None:
            return
        repo, commit = found
        if name not in repo.files:
            return self.not_found("EntryNotFound", f"{name} does not exist")
        data = repo.files[name]
        headers = {"X-Repo-Commit": commit, "ETag": f'"{git_blob_id(data)}"'}
        if name.endswith(LFS_SUFFIXES):
            headers |= {"X-Linked-Etag": f'"{sha256(data)}"', "X-Linked-Size": str(len(data)), "ETag": f'"{sha256(data)}"'}
        self.send_file(name, data, headers)

    # --- ModelScope ------------------------------------------------------------------------------------------------
    def ms_error(self, code: int, message: str) -> None:
        self.send_json(code, {"Code": code, "Message": message, "Success": False, "RequestId": "double"})

    def modelscope(self, path: str, query: dict) -> None:
        if m := re.fullmatch(r"/models/([^/]+/[^/]+)/repo/files", path):
            return self.ms_files(m.group(1), query.get("Revision"))
        if m := re.fullmatch(r"/models/([^/]+/[^/]+)/repo", path):
            return self.ms_file(m.group(1), query.get("Revision"), query.get("FilePath"))
        return self.ms_error(404, f"{path} not served by the hub double")

    def ms_repo(self, repo_id: str, revision: str | None) -> tuple[Repo, str] | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self.ms_error(404, f"model {repo_id} not exists")
            return None
        commit = repo.resolve(revision or "master")
        if commit is None:
            self.ms_error(404, f"revision {revision} not exists")
            return None
        return repo, commit

    def ms_files(self, repo_id: str, revision: str | None) -> None:
        if (found := self.ms_repo(repo_id, revision)) is None:
            return
        repo, commit = found
        files = [{"Name": name, "Path": name, "Type": "blob", "Size": len(data), "Sha256": sha256(data),
                  "Revision": commit, "CommittedDate": 1700000000, "IsLFS": name.endswith(LFS_SUFFIXES)}
                 for name, data in repo.files.items()]
        self.send_json(200, {"Code": 200, "Data": {"Files": files}, "Success": True})

    def ms_file(self, repo_id: str, revision: str | None, name: str | None) -> None:
        if (found := self.ms_repo(repo_id, revision)) is None:
            return
        repo, _ = found
        if name not in repo.files:
            return self.ms_error(404, f"file {name} not exists")
        self.send_file(name, repo.files[name], {})
