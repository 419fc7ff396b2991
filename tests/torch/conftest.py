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
