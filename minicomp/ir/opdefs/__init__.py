"""Definitions of the built-in ops, one module per family.

Each module registers its ops with :func:`minicomp.ir.ops.register_op` when
imported; :func:`load_all` imports them all once.
"""


def load_all() -> None:
    """Import every op family so that its ops are registered."""
    from minicomp.ir.opdefs import composite, elementwise, layout, nchwc, nn, reduce, scatter, window  # noqa: F401
