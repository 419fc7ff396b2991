"""Backends: the numpy reference interpreter and the native code generators."""
