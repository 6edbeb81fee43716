#!/bin/sh
# orch: create $MODEL_NAME in this pod's Ollama store from $MODELFILE on the model volume, once per store.
# Run by entrypoint.sh beside `ollama serve`; its output is the ollama container's log (kubectl logs POD -c ollama).
# Exits non-zero, with the reason on its last line, when the model cannot be created: the pod then restarts and
# stays unready, since readiness asks `ollama show $MODEL_NAME`.
set -eu
say() { echo "orch create-model: $*"; }
fail() { echo "orch create-model: FAILED: $*" >&2; exit 1; }

i=0
until ollama list >/dev/null 2>&1; do
    i=$((i + 1))
    [ "$i" -le "${SERVER_WAIT:-120}" ] || fail "the Ollama server did not answer within ${SERVER_WAIT:-120} s"
    sleep 1
done

# orch k8s apply copies the build onto the volume and writes .complete (the GGUF's sha256) once it has checked it
dir=$(dirname "$MODELFILE")
i=0
until [ -f "$MODELFILE" ] && [ "$(cat "$dir/.complete" 2>/dev/null)" = "$MODEL_SHA256" ]; do
    [ $((i % 30)) -ne 0 ] || say "waiting for $MODELFILE (sha256 $MODEL_SHA256) on the model volume: orch k8s apply copies it there"
    i=$((i + 1))
    [ "$i" -le "${FILES_WAIT:-900}" ] || fail "$MODELFILE with sha256 $MODEL_SHA256 did not appear on the model volume: run orch k8s apply"
    sleep 2
done

marker="${OLLAMA_MODELS:-$HOME/.ollama/models}/.orch-$(echo "$MODEL_NAME" | tr '/:' '__')"
if ollama show "$MODEL_NAME" >/dev/null 2>&1 && [ "$(cat "$marker" 2>/dev/null)" = "$MODEL_SHA256" ]; then
    say "$MODEL_NAME is already in this pod's store (sha256 $MODEL_SHA256)"
else
    say "creating $MODEL_NAME from $MODELFILE"
    ollama create "$MODEL_NAME" -f "$MODELFILE" || fail "ollama create $MODEL_NAME -f $MODELFILE did not succeed (see above)"
    echo "$MODEL_SHA256" > "$marker"
fi

# loaded now and kept loaded (OLLAMA_KEEP_ALIVE=-1), so that the first user does not wait for it
ollama run "$MODEL_NAME" "" >/dev/null 2>&1 || say "preloading $MODEL_NAME did not succeed: the first request will load it"
say "ready: $MODEL_NAME"
