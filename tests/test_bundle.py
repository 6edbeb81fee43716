"""orch bundle: everything carried in one file to a box with no network.

The end-to-end test is real from end to end: the bundle is made on this machine (pip resolving against PyPI, the real
Ollama and llama.cpp builds, the tiny build), and installed in a network namespace with only loopback, a fresh HOME and
no orch, by the bundle's own installer; there the real Ollama and Open WebUI run, and answer a chat.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import httpx
import pytest

from orchestrator.ship import bundle, target, unbundle
from support import ORCH, cli, real_ollama_binary, wait_until

X86 = target.Box("3.11", "x86_64", "2.36", ("avx", "avx2", "fma", "f16c"))
# what the services' logs would show of a try to leave the box (no route, no resolver in the namespace)
OUTSIDE = ("huggingface.co", "Network is unreachable", "Temporary failure in name resolution", "Name or service not known",
           "Max retries exceeded", "getaddrinfo failed", "Failed to establish a new connection")


@pytest.mark.parametrize("box, says", [
    (X86, None),
    (target.Box("3.11", "x86_64", "2.39", ("avx", "avx2", "fma", "f16c", "avx512f")), None),  # newer glibc, more CPU: fine
    (target.Box("3.12", "x86_64", "2.36", X86.cpu), "this bundle holds wheels for Python 3.11, and python3 here is 3.12"),
    (target.Box("3.11", "aarch64", "2.36", ()), "this bundle was made for x86_64, and this box is aarch64"),
    (target.Box("3.11", "x86_64", "2.31", X86.cpu), "this bundle's programs need glibc 2.36 or newer, and this box has glibc 2.31"),
    (target.Box("3.11", "x86_64", None, X86.cpu), "and this box has another C library"),
    (target.Box("3.11", "x86_64", "2.36", ("avx",)), "compiled for a CPU with avx2, fma, f16c, which this box's CPU lacks"),
], ids=["same", "newer", "python", "arch", "old glibc", "musl", "older cpu"])
def test_a_box_the_bundle_cannot_run_on_is_named_in_one_line(box, says):
    found = target.problems(X86, box)
    if says is None:
        assert found == []
    else:
        assert len(found) == 1 and says in found[0], found


def test_docker_and_disk_are_asked_of_the_box_before_anything_is_installed(tmp_path):
    manifest = {"made_for": target.this_box().as_dict(), "contents": {"images": {"ollama": "orch.local/ollama:0.34.1"}},
                "files": {"wheels/a.whl": {"sha256": "0" * 64, "size": 10}}, "installed_bytes": 1 << 60}
    found = unbundle.box_problems(manifest, target.this_box(), into=tmp_path, docker=None)
    assert [p.split(":")[0] for p in found] == ["this bundle carries Docker images, and there is no docker on this box",
                                                 f"installing this bundle takes about {((1 << 60) + 10) / 1e9:.1f} GB under {tmp_path}, and "
                                                 f"{shutil.disk_usage(tmp_path).free / 1e9:.1f} GB is free"]


def test_the_amx_check_finds_tile_code_and_passes_the_llama_cpp_orch_runs(tmp_path):
    """has_amx reads libraries for the instructions that configure AMX tiles, which every AMX path runs first."""
    source = tmp_path / "amx.c"
    source.write_text("#include <immintrin.h>\nvoid cfg(const void *p) { _tile_loadconfig(p); _tile_release(); }\n")
    subprocess.run(["gcc", "-O2", "-mamx-tile", "-shared", "-fPIC", "-o", str(tmp_path / "libamx.so"), str(source)], check=True)
    assert bundle.has_amx([tmp_path / "libamx.so"])

    from orchestrator.builder.llamacpp import runtime

    libs = sorted((runtime.locate() / runtime.PACKAGE / "lib").glob("*.so"))
    assert libs
    assert not bundle.has_amx(libs)


@pytest.mark.parametrize("args, says", [
    (["create", "{tmp}/b.tar", "--model", "nosuch"], "nosuch is not a build orch made: pass a build's name or directory"),
    (["create", "{tmp}", "--model", "nosuch"], "is a directory: give the bundle's file name"),
    (["create", "{tmp}/no/such/b.tar"], "does not exist: create it first"),
    (["install", "/etc/hostname"], "/etc/hostname is not an orch bundle (not a tar archive)"),
    (["install", "{tmp}"], "is a directory: pass the one file orch bundle create wrote"),
    (["install", "{tmp}/none.tar"], "does not exist: pass a file orch bundle create wrote"),
], ids=["no such build", "out is a folder", "no such folder", "not a tar", "a folder", "no such file"])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, isolated_home, args, says):
    before = sorted(isolated_home.rglob("*"))
    proc = cli("bundle", *[a.replace("{tmp}", str(tmp_path)) for a in args], check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0 and len(lines) == 1 and says in lines[0], proc.stderr
    assert sorted(isolated_home.rglob("*")) == before and list(tmp_path.iterdir()) == []


def test_a_tar_that_is_not_a_bundle_is_refused_by_the_installer_too(tmp_path):
    """The installer a user pipes into python3, given a tar orch did not write: one line, nothing installed."""
    other = tmp_path / "other.tar"
    with tarfile.open(other, "w") as tar:
        tar.add(__file__, "x.py")
    proc = subprocess.run([sys.executable, "-", str(other)], input=bundle.installer_source(), capture_output=True,
                          env={"HOME": str(tmp_path / "home"), "PATH": os.environ["PATH"]})
    assert proc.returncode == 2 and b"is not a complete orch bundle (no orch wheel in it)" in proc.stderr, proc.stderr
    assert not (tmp_path / "home").exists()


def _box_env(home: Path) -> dict:
    """A box's environment: its own HOME and caches, no orch or Ollama on PATH, nothing of this suite's."""
    return {"HOME": str(home), "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}


def _python() -> str:
    """The interpreter the box has: this machine's Python, not the suite's virtualenv."""
    return str(Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}")


@pytest.mark.timeout(3600)
def test_a_bundle_made_here_gives_a_chat_on_a_box_with_no_network(tiny_build, isolated_home, tmp_path, artifacts_dir):
    import netns

    # this machine: the suite's Ollama stands where orch install-ollama puts it; Open WebUI's torch as the suite pins it
    home = Path(real_ollama_binary()).resolve().parents[1]
    (isolated_home / "data" / "orch" / "ollama").mkdir(parents=True)
    (isolated_home / "data" / "orch" / "ollama" / home.name).symlink_to(home)
    out = tmp_path / "orch-bundle.tar"
    create = [str(ORCH), "bundle", "create", str(out), "--model", str(tiny_build), "--json"]
    env = os.environ | {"ORCH_WEBUI_PREINSTALL": "torch==2.13.0",
                        # pip's own cache, as a user's pip has it (every test has an XDG_CACHE_HOME of its own)
                        "PIP_CACHE_DIR": str(Path(os.environ["ORCH_TEST_CACHE"]) / "pip")}
    # Ctrl-C while the archive is written: no bundle under its name, and the next run goes on from what was gathered
    started_create = time.monotonic()
    first = subprocess.Popen(create, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_until(lambda: out.with_name(f".{out.name}.partial").exists() or first.poll() is not None, timeout=2400,
                   what="the archive being written", every=0.5)
        gathered = time.monotonic()
        first.send_signal(signal.SIGINT)
        stopped = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 130, stopped[1][-3000:]
    assert not out.exists() and not out.with_name(f".{out.name}.partial").exists()
    assert (tmp_path / "orch-bundle.tar.parts" / "wheels.json").is_file()
    made = subprocess.run(create, capture_output=True, text=True, timeout=2400, env=env)
    assert made.returncode == 0, made.stderr[-3000:]
    assert "reusing the wheels an earlier run gathered" in made.stderr
    created = json.loads(made.stdout)
    assert created["bytes"] == out.stat().st_size and not out.with_name(out.name + ".parts").exists()
    model = created["contents"]["models"][0]["models"][0]
    with tarfile.open(out) as tar:
        names = tar.getnames()
    assert names[0] == "install.py" and unbundle.is_orch_wheel(names[1]) and names[-1] == "manifest.json"
    assert any(n.startswith("wheels/open_webui-") for n in names) and not any(n.startswith("wheels/llama_cpp_python-") for n in names)
    assert {"ollama/0.34.1/bin/ollama", "ollama/0.34.1/lib/ollama/llama-server", "ollama/0.34.1/lib/ollama/libllama.so",
            f"builds/{tiny_build.name}/build.json", "llama.cpp/tree/convert_hf_to_gguf.py",
            "llama.cpp/tree/llama-cpp-python/llama_cpp/llama_cpp.py", "llama.cpp/runtime/llama_cpp/lib/libllama.so",
            "llama.cpp/tools/llama-quantize", "llama.cpp/tools/libllama.so"} <= set(names)

    # cut short: the installer refuses it, and the box has nothing new
    box = tmp_path / "box"
    cut = tmp_path / "cut.tar"
    with open(out, "rb") as f, open(cut, "wb") as o:
        o.write(f.read(64 << 20))
    proc = subprocess.run(["sh", "-c", 'tar -xOf "$1" install.py | "$2" - "$1"', "-", str(cut), _python()], capture_output=True,
                          text=True, env=_box_env(box))
    assert proc.returncode == 2 and "cut short" in proc.stderr, proc.stderr
    assert not box.exists()

    # the box: a network namespace with loopback alone, a fresh HOME; the bundle's installer, then orch up
    box_orch = box / ".local" / "share" / "orch" / "orch-0.1.0" / "bin" / "orch"
    stack = box / ".local" / "share" / "orch" / "stack"
    started = time.monotonic()
    with netns.private_network():
        assert subprocess.run(["ip", "route", "show"], capture_output=True, text=True).stdout == "", "the namespace has a route out"
        try:
            proc = subprocess.run(["sh", "-c", 'tar -xOf "$1" install.py | "$2" - "$1"', "-", str(out), _python()],
                                  capture_output=True, text=True, env=_box_env(box), timeout=1800)
            assert proc.returncode == 0, proc.stderr[-3000:]
            command = f"{box_orch} up --runtime native --offline --model {model}"
            assert command in proc.stdout, proc.stdout
            installed = time.monotonic()
            up = subprocess.run([*command.split(), "--wait", "600"], capture_output=True, text=True, env=_box_env(box), timeout=1200)
            assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
            env = dict(line.split("=", 1) for line in (stack / ".env").read_text().splitlines() if "=" in line and not line.startswith("#"))
            webui = "http://127.0.0.1:3000"
            token = httpx.post(f"{webui}/api/v1/auths/signin", json={"email": env["WEBUI_ADMIN_EMAIL"],
                                                                     "password": env["WEBUI_ADMIN_PASSWORD"]}, timeout=60).json()["token"]
            reply = httpx.post(f"{webui}/api/chat/completions", headers={"Authorization": f"Bearer {token}"}, timeout=300,
                               json={"model": model, "messages": [{"role": "user", "content": "你好"}], "stream": False})
            assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"], reply.text[:500]
            chatted = time.monotonic()
            health = subprocess.run([str(box_orch), "health", "--json"], capture_output=True, text=True, env=_box_env(box), timeout=300)
            report = json.loads(health.stdout)
            assert health.returncode == 0 and report["ok"], [c for c in report["checks"] if c["status"] != "ok"]
            logs = subprocess.run([str(box_orch), "logs"], capture_output=True, text=True, env=_box_env(box), timeout=120).stdout
            assert "== open-webui ==" in logs and "== ollama ==" in logs
            tried = [marker for marker in OUTSIDE if marker in logs]
            assert tried == [], f"a service tried to leave the box: {tried}"
        finally:
            down = subprocess.run([str(box_orch), "down"], capture_output=True, text=True, env=_box_env(box), timeout=300) \
                if box_orch.is_file() else None
    assert down is None or down.returncode == 0, down.stderr
    assert not list((box / ".local" / "share" / "orch").glob(".bundle-*")), "the staging folder is gone"

    # one altered member (orch's own wheel, the second): refused while checking, and a second box has nothing new
    with tarfile.open(out) as tar:
        wheel = tar.getmember(names[1])
    with open(out, "r+b") as f:
        f.seek(wheel.offset_data + wheel.size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    other = tmp_path / "other-box"
    altered = subprocess.run([str(ORCH), "bundle", "install", str(out)], capture_output=True, text=True,
                             env=_box_env(other) | {"PATH": os.environ["PATH"]}, timeout=600)
    assert altered.returncode == 2 and f"{names[1]} does not match its sha256 in the manifest: it was altered" in altered.stderr, \
        altered.stderr
    assert not (other / ".local" / "share" / "orch").exists() or not any((other / ".local" / "share" / "orch").iterdir())

    figures = {"bundle_bytes": created["bytes"], "gather_seconds": round(gathered - started_create, 1),
               "resumed_create_seconds": created["seconds"], "sizes": created["sizes"],
               "install_seconds": round(installed - started, 1), "install_to_chat_seconds": round(chatted - started, 1)}
    (artifacts_dir / "bundle-figures.json").write_text(json.dumps(figures, indent=2) + "\n")
