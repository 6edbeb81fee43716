"""Talking to an Ollama server: client (the one owner of its host, HTTP and errors), register, chat, probe, watch."""
