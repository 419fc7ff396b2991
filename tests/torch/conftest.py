"""The PyTorch frontend's tests need torch (the [torch] or [test] extra).

Where torch cannot be installed they are skipped with the reason; in CI,
which installs it from the project's own files, a missing torch fails.
"""

import os

import pytest


def require_torch():
    """The torch module; skips the calling test module where torch is missing (fails in CI)."""
    try:
        import torch
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("torch is not installed: pip install -e '.[torch]'", allow_module_level=True)
    return torch


def require_transformers():
    """transformers (importable beside the CPU torch: benchmarks/zoo.py); skips the calling test where
    the [zoo] extra is missing."""
    zoo = pytest.importorskip("benchmarks.zoo")
    try:
        return zoo.import_transformers()
    except ImportError as exc:
        pytest.skip(f"needs the [zoo] extra: {exc}")
