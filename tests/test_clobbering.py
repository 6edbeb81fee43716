"""What orch writes never lands on what a user made: foreign directories, symlinks, names with line breaks, shell words."""

from __future__ import annotations

import hashlib
import subprocess

import pytest

from orchestrator.builder.catalog import slug
from support import cli


def test_a_build_refuses_a_directory_orch_did_not_write_and_force_deletes_nothing_there(checkpoint, tmp_path):
    out = tmp_path / "project"
    out.mkdir()
    (out / "build.json").write_text('{"my": "own build config"}')
    (out / "notes.txt").write_text("mine")
    for extra in ([], ["--force"]):
        proc = cli("build", str(checkpoint(32)), "--no-register", "--dir", str(out), *extra, check=False)
        assert proc.returncode != 0 and "holds files that orch build did not write" in proc.stderr, proc.stderr
    assert (out / "build.json").read_text() == '{"my": "own build config"}' and (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == ["build.json", "notes.txt"]


def test_k8s_render_refuses_a_foreign_directory_and_a_symlinked_secrets_folder(tiny_build, tmp_path):
    foreign = tmp_path / "deploy"
    foreign.mkdir()
    (foreign / "kustomization.yaml").write_text("resources: [mine.yaml]\n")
    proc = cli("k8s", "render", str(tiny_build), "--dir", str(foreign), check=False)
    assert proc.returncode != 0 and "did not write" in proc.stderr
    assert (foreign / "kustomization.yaml").read_text() == "resources: [mine.yaml]\n"

    out = tmp_path / "k8s"
    cli("k8s", "render", str(tiny_build), "--dir", str(out))  # orch's own directory: rendered again freely
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o755)
    for f in (out / "secrets").iterdir():
        f.unlink()
    (out / "secrets").rmdir()
    (out / "secrets").symlink_to(elsewhere)
    proc = cli("k8s", "render", str(tiny_build), "--dir", str(out), check=False)
    assert proc.returncode != 0 and "is a symlink" in proc.stderr
    assert list(elsewhere.iterdir()) == [] and oct(elsewhere.stat().st_mode & 0o777) == "0o755"


@pytest.mark.parametrize("args, says", [
    (["--name", "mybot:v1\n"], "not a valid Ollama model name"),
    (["--namespace", "chat\n"], "not a DNS-1123 label"),
    (["--model-volume", "hostpath", "--host-path", "/"], "other than /"),
    (["--model-volume", "hostpath", "--host-path", "models"], "must be an absolute directory"),
])
def test_k8s_render_refuses_values_that_would_bend_the_manifests(tiny_build, tmp_path, args, says):
    proc = cli("k8s", "render", str(tiny_build), "--dir", str(tmp_path / "k8s"), *args, check=False)
    assert proc.returncode == 2 and says in proc.stderr, proc.stderr
    assert not (tmp_path / "k8s").exists()


def test_a_build_name_with_a_line_break_is_refused(tmp_path):
    proc = cli("build", "tiny", "--name", "mybot:v1\n", "--no-register", "--dir", str(tmp_path / "out"), check=False)
    assert proc.returncode == 2 and "not a valid Ollama model name" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_the_loader_script_treats_a_gguf_name_as_data(tmp_path):
    """The model-loading pod's script, run here by sh: a file named like a shell command runs nothing."""
    from orchestrator.stack.kubernetes.runtime import install_script

    incoming, target = tmp_path / "incoming", tmp_path / "models" / "tiny"
    incoming.mkdir()
    target.parent.mkdir()  # the model volume's mount
    name = "t;touch pwned;.gguf"
    (incoming / name).write_bytes(b"GGUF weights")
    sha = hashlib.sha256(b"GGUF weights").hexdigest()
    proc = subprocess.run(["sh", "-c", install_script(str(incoming), name, str(target), sha)], cwd=tmp_path, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    assert (target / name).read_bytes() == b"GGUF weights" and (target / ".complete").read_text().strip() == sha
    assert not (tmp_path / "pwned").exists()
    bad = subprocess.run(["sh", "-c", install_script(str(tmp_path / "nowhere"), name, str(target), "0" * 64)], capture_output=True,
                         text=True)
    assert bad.returncode == 1


@pytest.mark.parametrize("a, b", [("我的模型", "你的模型"), ("x" * 240, "x" * 239 + "y")])
def test_names_that_slug_alike_get_build_directories_of_their_own(a, b):
    assert slug(a) != slug(b) and len(slug(a)) <= 80 and slug("Baichuan2-7B-Chat") == "baichuan2-7b-chat"
