#!/bin/sh
# orch: the ollama container's command. Serves, and makes sure this pod's store holds the model (create-model.sh);
# a model that cannot be created ends the container with the reason on its last log line.
set -u
ollama serve &
server=$!
trap 'kill -TERM "$server" 2>/dev/null; wait "$server"; exit 0' TERM INT
if ! sh /orch/create-model.sh; then
    kill -TERM "$server" 2>/dev/null
    wait "$server"
    exit 1
fi
wait "$server"
