"""`orch register` and the end of `orch build`: a Modelfile and its GGUF reach a server over HTTP, exactly as written.

The server is the real Ollama (built from source), except where a test needs a fault it cannot be made to show (an
upload cut halfway, a create that ends in an error line, a parameter kept with another value): there it is
tests/ollama_double.py, and the test says so.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import httpx
import pytest

from orchestrator import modelfile
from orchestrator.errors import OrchError
from support import cli


def register(build_dir, double, *args, check=False):
    return cli("register", str(build_dir), "--host", double.url, *args, check=check)


def blob_posts(double) -> int:
    return sum(1 for method, path in double.stats()["requests"] if method == "POST" and path.startswith("/api/blobs/"))


def show(server, name: str) -> dict:
    r = httpx.post(f"{server.url}/api/show", json={"model": name}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def tags(server) -> list[str]:
    return [m["name"] for m in httpx.get(f"{server.url}/api/tags", timeout=30).json()["models"]]


def test_build_tiny_registers_into_the_server_and_says_how_to_do_it_by_hand(real_ollama, tmp_path):
    """The real Ollama."""
    server = real_ollama()
    proc = cli("build", "tiny", "--quant", "q4_K_M", "--dir", str(tmp_path / "tiny"), env={"OLLAMA_HOST": server.url})
    assert "registered" in proc.stdout and "ollama create tiny:q4_K_M -f" in proc.stdout

    assert tags(server) == ["tiny:q4_K_M"]
    written = modelfile.parse(tmp_path / "tiny" / "tiny.Q4_K_M.Modelfile")
    shown = show(server, "tiny:q4_K_M")
    assert shown["template"] == written.template
    assert modelfile.parse_shown_parameters(shown["parameters"])["stop"] == ["<reserved_106>"]
    assert modelfile.parse_shown_parameters(shown["parameters"])["num_ctx"] == 4096
    record = json.loads((tmp_path / "tiny" / "build.json").read_text())
    (reg,) = record["registration"]
    assert reg["status"] == "registered" and reg["uploaded"] and reg["confirmed"]["template"]
    assert reg["digest"] == record["artifacts"][0]["sha256"]


def test_registering_an_unchanged_build_again_uploads_nothing(real_ollama, tiny_build):
    """The real Ollama."""
    server = real_ollama()
    first = json.loads(register(tiny_build, server, "--json", check=True).stdout)
    again = json.loads(register(tiny_build, server, "--json", check=True).stdout)
    assert [r["uploaded"] for r in first + again] == [True, False]
    assert server.requests("POST", "/api/blobs/") == 1


def test_a_gguf_replaced_by_another_of_the_same_size_is_registered_as_itself(real_ollama, tiny_build, tmp_path):
    """The real Ollama. build.json's sha256 is trusted only while the file is the one the build wrote: a GGUF changed in
    place after the build (same name, same size) is hashed again and sent, never registered as the old one's blob."""
    server = real_ollama()
    build = tmp_path / "build"
    shutil.copytree(tiny_build, build)
    (gguf,) = build.glob("*.gguf")
    record = json.loads((build / "build.json").read_text())
    st = gguf.stat()
    record["artifacts"][0] |= {"mtime_ns": st.st_mtime_ns, "inode": st.st_ino}  # as the build recorded the copy it wrote
    (build / "build.json").write_text(json.dumps(record))
    (first,) = json.loads(register(build, server, "--json", "--no-check", check=True).stdout)
    assert first["digest"] == record["artifacts"][0]["sha256"]

    data = bytearray(gguf.read_bytes())
    data[-1] ^= 0xFF  # the last byte of the last tensor: still a GGUF, of the same size, other weights
    with open(gguf, "r+b") as f:
        f.write(data)
    (second,) = json.loads(register(build, server, "--json", "--no-check", check=True).stdout)
    assert second["digest"] == hashlib.sha256(data).hexdigest() != first["digest"] and second["uploaded"] is True


def test_a_build_records_its_ggufs_as_written(tiny_build):
    """What registration checks the recorded sha256 against."""
    record = json.loads((tiny_build / "build.json").read_text())
    for a in record["artifacts"]:
        st = (tiny_build / a["file"]).stat()
        assert (a["size"], a["mtime_ns"], a["inode"]) == (st.st_size, st.st_mtime_ns, st.st_ino)


def test_a_server_that_already_has_the_blob_receives_no_upload(real_ollama, tiny_build):
    """The real Ollama."""
    server = real_ollama()
    (gguf,) = tiny_build.glob("*.gguf")
    data = gguf.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    assert httpx.post(f"{server.url}/api/blobs/sha256:{digest}", content=data, timeout=60).status_code == 201

    (result,) = json.loads(register(tiny_build, server, "--json", check=True).stdout)
    assert result["status"] == "registered" and result["uploaded"] is False
    assert server.requests("POST", "/api/blobs/") == 1  # only the one made above


def test_an_upload_cut_halfway_is_retried_and_succeeds(ollama_double, tiny_build):
    """The Ollama double, which cuts the upload."""
    double = ollama_double()
    double.fault("upload_cut", times=1)
    (result,) = json.loads(register(tiny_build, double, "--json", check=True).stdout)
    assert result["status"] == "registered" and result["uploaded"]
    assert blob_posts(double) == 2 and double.stats()["blob_uploads"] == 1


def test_a_create_that_ends_in_an_error_line_is_a_failure(ollama_double, tiny_build):
    """The Ollama double, which ends the create's stream in an error line."""
    double = ollama_double()
    double.fault("create_error", times=1)
    proc = register(tiny_build, double)
    assert proc.returncode == 1
    assert "failed" in proc.stdout and "unsupported model architecture" in proc.stdout
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("name, value", [("temperature", 0.9), ("top_k", 4), ("stop", ["</s>"])])
def test_a_parameter_the_server_kept_with_another_value_fails_the_confirmation(ollama_double, tiny_build, name, value):
    """The values /api/show gives back are compared with the Modelfile's, not looked up as substrings (the Ollama double
    alters one)."""
    double = ollama_double()
    double.fault("alter_parameter", name=name, value=value, path="/api/show")
    proc = register(tiny_build, double)
    assert proc.returncode == 1 and "did not keep these parameters" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert f"{name} " in proc.stdout + proc.stderr


def test_an_invalid_name_is_refused_before_anything_is_sent(real_ollama, tiny_build):
    """The real Ollama: its log shows no request."""
    server = real_ollama()
    before = server.requests("")
    proc = register(tiny_build, server, "--name", "My Bot!")
    assert proc.returncode != 0
    assert len(proc.stderr.strip().splitlines()) == 1 and "not a valid Ollama model name" in proc.stderr
    assert server.requests("") == before


def test_no_server_is_a_clear_failure_for_register(tiny_build, unused_port):
    proc = cli("register", str(tiny_build), "--host", f"127.0.0.1:{unused_port}", check=False)
    assert proc.returncode == 1
    assert f"no Ollama answered at http://127.0.0.1:{unused_port}" in proc.stdout and "Traceback" not in proc.stderr


def test_the_advice_without_a_server_is_to_start_one_and_run_the_same_command_again(tiny_build, unused_port):
    (mf,) = tiny_build.glob("*.Modelfile")
    proc = cli("register", str(mf), "--name", "mybot:v1", "--host", f"127.0.0.1:{unused_port}", check=False)
    assert proc.returncode == 1
    said = " ".join(proc.stdout.split())
    assert "start one (ollama serve, or orch up), then run this command again" in said and "orch register" not in said


def test_a_build_without_a_server_says_which_register_line_to_run_later(tiny_build):
    """What orch build registers at its end (register_build): its output names the orch register line for later."""
    from orchestrator.ollama.register import register_build

    # port 9 (discard): a privileged port no server of the suite's other worker can take while this runs
    (reg,) = register_build(tiny_build, "127.0.0.1:9")
    (mf,) = tiny_build.glob("*.Modelfile")
    assert reg.status == "skipped", reg
    assert reg.message.endswith(f"then run: orch register {mf.resolve()} --name {reg.name} --host http://127.0.0.1:9")


def test_a_gguf_given_to_register_is_refused_up_front_saying_what_to_pass(tiny_build):
    (gguf,) = tiny_build.glob("*.gguf")
    proc = cli("register", str(gguf), "--host", "http://127.0.0.1:9", check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "is a GGUF, not a Modelfile: pass the Modelfile beside it" in lines[0], proc.stderr


def test_a_modelfile_registers_as_written_under_a_new_name(real_ollama, tiny_build, tmp_path):
    """The real Ollama: edits to the Modelfile (a SYSTEM line, a parameter, a seeded MESSAGE) are what it keeps."""
    server = real_ollama()
    work = tmp_path / "edited"
    shutil.copytree(tiny_build, work)
    mf = next(work.glob("*.Modelfile"))
    mf.write_text(mf.read_text() + '\nSYSTEM """你是一个乐于助人的助手。"""\nparameter top_k 7\nMESSAGE user "hello \\"there\\""\n')
    proc = cli("register", str(mf), "--host", server.url, "--name", "edited:v1")
    assert proc.stdout.startswith("registered edited:v1")
    shown = show(server, "edited:v1")
    assert shown["system"] == "你是一个乐于助人的助手。" and modelfile.parse_shown_parameters(shown["parameters"])["top_k"] == 7
    assert shown["messages"] == [{"role": "user", "content": 'hello "there"'}]


def test_modelfile_parser_reads_what_ollama_reads(tmp_path):
    path = tmp_path / "Modelfile"
    path.write_text('# a comment\nfrom ./m.gguf\nTEMPLATE """{{ .Prompt }}\n"""\nSYSTEM plain text here\n'
                    'PARAMETER stop "<a>"\nPARAMETER stop "<b>"\nPARAMETER temperature 0.3\nPARAMETER num_ctx 4096\n'
                    'LICENSE """one"""\nLICENSE """two"""\nMESSAGE assistant "say \\"hi\\""\n')
    m = modelfile.parse(path)
    assert (m.from_, m.template, m.system) == ("./m.gguf", "{{ .Prompt }}\n", "plain text here")
    assert m.parameters == {"stop": ["<a>", "<b>"], "temperature": 0.3, "num_ctx": 4096}
    assert m.license == ["one", "two"] and m.messages == [{"role": "assistant", "content": 'say "hi"'}]
    assert m.gguf == tmp_path / "m.gguf"


@pytest.mark.parametrize("text, problem", [
    ("FROM ./m.gguf\nPARAMETER colour red\n", "2: unknown PARAMETER colour"),
    ("FROM ./m.gguf\nPARAMETER num_ctx lots\n", "2: PARAMETER num_ctx 'lots' is not a valid value"),
    ("FROM ./m.gguf\nTEMPLATE \"\"\"never closed\n", 'a """ value is never closed'),
    ("FROM ./m.gguf\nMESSAGE robot hi\n", "MESSAGE role 'robot'"),
    ("PARAMETER top_k 5\n", "has no FROM line"),
    ("FROM ./m.gguf\nFRM typo\n", "2: unknown command FRM"),
])
def test_modelfile_parser_names_the_line_and_the_problem(tmp_path, text, problem):
    path = tmp_path / "Modelfile"
    path.write_text(text)
    with pytest.raises(OrchError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        modelfile.parse(path)


def test_the_clients_errors_are_orchs_whichever_library_sent_the_request(real_ollama, unused_port):
    """The official client's ResponseError and ConnectionError never leave orch's client: Refused and TransportError do
    (the real Ollama's 404, and nothing listening)."""
    from orchestrator.ollama import client

    real = real_ollama()
    with client.Ollama(real.url) as server:
        with pytest.raises(client.Refused) as refused:
            server.show("nosuch:latest")
        assert refused.value.status_code == 404 and "not found" in refused.value.error
        assert server.models() == []
    with client.Ollama(f"http://127.0.0.1:{unused_port}", timeout=5) as server:
        for call in (lambda: server.show("x"), lambda: list(server.chat("x", [{"role": "user", "content": "hi"}], stream=True)),
                     lambda: server.create("x", files={})):
            with pytest.raises(client.TransportError):
                call()
