"""`orch build` from a hub, as every first user runs it: the real huggingface_hub and modelscope clients against loopback doubles.

tests/hub_double.py stands in for the Hugging Face Hub (reached through HF_ENDPOINT, as mirror users set it)
and for ModelScope (MODELSCOPE_ENDPOINT); it is not either hub.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hub_double import HubDouble, sha256
from support import orch

REPO = "baichuan-inc/Baichuan2-7B-Chat"
HUBS = ["hf", "modelscope"]


@pytest.fixture
def hub(tmp_path):
    double = HubDouble().start()
    yield double
    double.stop()


def environment(hub: HubDouble, tmp_path: Path) -> dict:
    """A process environment pointing both clients at the double, with caches of this test's own."""
    return os.environ | {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1",
                         "MODELSCOPE_ENDPOINT": hub.url, "MODELSCOPE_CACHE": str(tmp_path / "modelscope-cache"),
                         "MODELSCOPE_DOWNLOAD_RETRY_MAX_DELAY_SECONDS": "1",  # the client's own setting: retries without long waits
                         "HOME": str(tmp_path / "home")}


def build(hub: HubDouble, tmp_path: Path, source: str, spec: str = "baichuan2-7b-chat", *extra: str, check: bool = True):
    return orch("build", spec, "--source", source, "--quant", "q8_0", "--no-register", "--dir", str(tmp_path / "out"), *extra,
                env=environment(hub, tmp_path), check=check)


def one_error_line(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.rstrip().endswith(lines[0]), "the error is the last thing said"
    return lines[0]


def final_files(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.is_file()) if out.exists() else []


@pytest.mark.parametrize("source", HUBS)
def test_a_download_builds_and_records_the_hub_hashes(hub, tmp_path, checkpoint, source):
    repo = hub.add(REPO, checkpoint(32))
    record = json.loads(build(hub, tmp_path, source, "baichuan2-7b-chat", "--json").stdout)
    assert record["source"]["repo"] == REPO and record["source"]["hub"] == source
    assert record["source"]["revision"] == (repo.commit if source == "hf" else "master")
    assert record["source"]["files"]["pytorch_model.bin"]["sha256"] == sha256(repo.files["pytorch_model.bin"])
    assert "modeling_baichuan.py" not in record["source"]["files"] and record["artifacts"][0]["verify"]["generated_tokens"] > 0
    assert hub.gets("pytorch_model.bin") == [None], "downloaded once, whole"


@pytest.mark.parametrize("source", HUBS)
def test_a_body_cut_halfway_is_resumed_where_it_stopped(hub, tmp_path, checkpoint, source):
    hub.add(REPO, checkpoint(32))
    hub.cut["pytorch_model.bin"] = 1
    build(hub, tmp_path, source)
    first, *resumed = hub.gets("pytorch_model.bin")
    assert first is None and resumed and resumed[0].startswith("bytes=") and resumed[0] != "bytes=0-", hub.gets("pytorch_model.bin")
    assert "Q8_0.gguf" in " ".join(final_files(tmp_path / "out"))


@pytest.mark.parametrize("source", HUBS)
def test_a_download_that_keeps_failing_is_finished_by_running_the_same_command_again(hub, tmp_path, checkpoint, source):
    """The documented second run fetches only what the first could not: finished shards are not downloaded again."""
    hub.add(REPO, checkpoint(32, shards=3))
    shards = [f"pytorch_model-0000{i}-of-00003.bin" for i in (1, 2, 3)]
    hub.broken.add(shards[1])
    failed = build(hub, tmp_path, source, check=False)
    assert failed.returncode == 1
    line = one_error_line(failed)
    assert "while downloading" in line and "run the same command again to resume" in line
    assert not any(n.endswith(".gguf") for n in final_files(tmp_path / "out"))

    hub.broken.clear()
    build(hub, tmp_path, source)
    assert [len(hub.gets(s)) for s in (shards[0], shards[2])] == [1, 1], "finished shards were fetched again"
    assert len(hub.gets(shards[1])) >= 2
    assert any(n.endswith(".Q8_0.gguf") for n in final_files(tmp_path / "out"))


@pytest.mark.parametrize("source", HUBS)
@pytest.mark.parametrize("where", ["middle", "start"], ids=["weights still readable", "header unreadable"])
def test_bytes_that_do_not_match_the_published_sha256_leave_no_artifact(hub, tmp_path, checkpoint, source, where):
    hub.add(REPO, checkpoint(32))
    hub.corrupt["pytorch_model.bin"] = where
    proc = build(hub, tmp_path, source, check=False)
    assert proc.returncode == 1
    line = one_error_line(proc)
    assert "pytorch_model.bin" in line and "sha256" in line and "corrupt download" in line
    out = tmp_path / "out"
    assert not list(out.rglob("*.gguf")) if out.exists() else True, "a GGUF made from corrupt bytes was left under a final name"
    assert final_files(out) == []

    hub.corrupt.clear()  # the mirror is fixed: the same command now builds
    build(hub, tmp_path, source)
    assert any(n.endswith(".Q8_0.gguf") for n in final_files(out))


@pytest.mark.parametrize("source", HUBS)
@pytest.mark.parametrize("spec, extra, says", [
    ("someone/no-such-model", [], "someone/no-such-model was not found"),
    ("baichuan2-7b-chat", ["--revision", "v9"], "revision 'v9'"),
], ids=["missing repo", "missing revision"])
def test_a_missing_repo_or_revision_is_one_line(hub, tmp_path, checkpoint, source, spec, extra, says):
    hub.add(REPO, checkpoint(32))
    proc = build(hub, tmp_path, source, spec, *extra, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [one_error_line(proc)] and says in proc.stderr
    assert not (tmp_path / "out").exists()
