"""Frontends: ways to make a Graph (the Python builder, the ONNX importer)."""
