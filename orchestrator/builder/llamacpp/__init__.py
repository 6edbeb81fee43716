"""llama.cpp, pinned: its converter (provisioned from the PyPI sdist, run through orch's shim), its quantizer and the child-process runner."""
