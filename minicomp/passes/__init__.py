"""Passes: graph-level rewrites, fusion, lowering to loops, scheduling, memory."""
