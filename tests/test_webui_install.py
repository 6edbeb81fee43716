"""What goes into Open WebUI's virtualenv for the native runtime: on a box with no GPU, a CPU-only torch first, so that
PyPI's CUDA build (2.7 GB of nvidia-* packages, installed) is never installed beside or instead of it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from orchestrator.errors import OrchError
from orchestrator.stack import native
from orchestrator.stack.native import PipStep
from support import Recording

PACKAGE = "open-webui==0.12.4"


@pytest.mark.parametrize("gpu, env, first", [
    (False, {}, ("torch", "--index-url", "https://download.pytorch.org/whl/cpu")),
    (False, {"ORCH_TORCH_CPU_INDEX": "https://mirrors.example.cn/pytorch-wheels/cpu"},
     ("torch", "--index-url", "https://mirrors.example.cn/pytorch-wheels/cpu")),
    (True, {}, (PACKAGE,)),  # a GPU box: PyPI's CUDA torch is the one it wants
    (False, {"ORCH_TORCH_CPU_INDEX": "none"}, (PACKAGE,)),
    (False, {"ORCH_WEBUI_PREINSTALL": "torch==2.13.0 numpy<3"}, ("torch==2.13.0",)),  # the user's own choice, as given
], ids=["no GPU", "a mirror of the CPU index", "GPU", "asked for none", "the user's preinstall"])
def test_the_cpu_torch_comes_first_only_where_there_is_no_gpu(monkeypatch, gpu, env, first):
    for key in ("ORCH_TORCH_CPU_INDEX", "ORCH_WEBUI_PREINSTALL"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    steps = native.install_steps(PACKAGE, gpu=gpu)
    assert steps[0].args[:len(first)] == first
    assert steps[-1] == PipStep((PACKAGE,)), "Open WebUI last, and never optional"
    assert sum("torch" in " ".join(s.args) for s in steps) <= 1, "one torch at most"


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    path = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    return path


def test_an_index_that_does_not_answer_is_a_warning_and_the_install_goes_on(venv, unused_port):
    """A loopback port nothing listens on stands for a CPU index this network cannot reach."""
    notes = Recording()
    native.run_pip(venv, [PipStep(("torch", "--index-url", f"http://127.0.0.1:{unused_port}/simple", "--timeout", "2",
                                   "--retries", "0"), optional="the CPU-only torch could not be installed"),
                          PipStep(("--no-index", "pip"))], notes)
    assert [level for level, text in notes.notes if "the CPU-only torch could not be installed" in text] == ["warning"]
    assert str(venv / "install.log") in notes.notes[-1][1]
    assert not list(venv.glob("lib/python*/site-packages/torch")), "nothing half-installed"


def test_a_required_step_that_fails_is_one_line_naming_the_log(venv, unused_port):
    with pytest.raises(OrchError) as e:
        native.run_pip(venv, [PipStep(("open-webui", "--index-url", f"http://127.0.0.1:{unused_port}/simple", "--timeout", "2",
                                       "--retries", "0"))], Recording())
    assert "pip could not install open-webui" in str(e.value) and str(venv / "install.log") in str(e.value)
    assert "\n" not in str(e.value)
