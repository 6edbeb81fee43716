"""orch: put the build on the model volume from $MODEL_URL (orch k8s render --model-url), checked by sha256.

The Ollama pods' init container, so that gigabytes never stream through the API server. Nothing is fetched when the
volume already holds the build (.complete names its sha256). The download lands in a directory of this pod's own, is
bounded by the size the build recorded, and appears under its final name only once its sha256 matched, .complete
included: replicas fetching at once each finish whole, and the first rename wins.
"""

import hashlib
import os
import shutil
import sys
import urllib.request

url, sha, size = os.environ["MODEL_URL"], os.environ["MODEL_SHA256"], int(os.environ["MODEL_SIZE"])
modelfile, gguf = os.environ["MODELFILE"], os.environ["GGUF"]
target = os.path.dirname(modelfile)
incoming = f"{target}.incoming-{os.environ.get('HOSTNAME', 'pod')}"


def say(text):
    print(f"orch fetch-model: {text}", flush=True)


def fail(text):
    shutil.rmtree(incoming, ignore_errors=True)
    sys.exit(f"orch fetch-model: FAILED: {text}")


def complete(directory):
    try:
        with open(os.path.join(directory, ".complete")) as f:
            return f.read().strip() == sha
    except OSError:
        return False


if complete(target):
    say(f"the model volume already holds {gguf} (sha256 {sha[:12]})")
    sys.exit(0)
if not url.startswith(("https://", "http://")):
    fail(f"{url!r} is not an http(s) URL")
shutil.rmtree(incoming, ignore_errors=True)
os.makedirs(incoming)
say(f"fetching {gguf} ({size} bytes) from {url}")
digest, got = hashlib.sha256(), 0
try:
    with urllib.request.urlopen(url, timeout=60) as answer, open(os.path.join(incoming, gguf), "wb") as out:
        while chunk := answer.read(1 << 20):
            got += len(chunk)
            if got > size:
                fail(f"{url} sent more than the {size} bytes the build recorded")
            digest.update(chunk)
            out.write(chunk)
except OSError as e:
    fail(f"{url}: {e}")
if digest.hexdigest() != sha:
    fail(f"{url} sent {got} bytes with sha256 {digest.hexdigest()}, not the build's {sha}")
shutil.copyfile(os.environ["MODELFILE_SOURCE"], os.path.join(incoming, os.path.basename(modelfile)))
with open(os.path.join(incoming, ".complete"), "w") as f:
    f.write(sha + "\n")
if complete(target):  # another replica finished first
    shutil.rmtree(incoming)
else:
    old = f"{target}.old-{os.environ.get('HOSTNAME', 'pod')}"
    if os.path.exists(target):
        os.rename(target, old)
    os.rename(incoming, target)
    shutil.rmtree(old, ignore_errors=True)
say(f"ready: {gguf} (sha256 {sha[:12]})")
