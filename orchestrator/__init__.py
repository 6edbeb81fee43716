"""orch: Baichuan2 weights in, a verified quantized Ollama model out."""

__version__ = "0.1.0"
