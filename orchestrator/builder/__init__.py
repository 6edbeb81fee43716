"""Weights in, verified GGUFs and Modelfiles out: catalog -> fetch -> checkpoint -> plan -> pipeline.

This package never imports orchestrator.ollama or orchestrator.stack: a build
needs no server (registration is the caller's next step).
"""
