"""Running the model: Ollama plus Open WebUI as one stack, through a runtime (docker compose, native processes)."""
