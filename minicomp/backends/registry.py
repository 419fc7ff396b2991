"""The backend registry: one entry per code generator.

A :class:`Backend` names its default pass pipeline, says whether it runs
loop-IR kernels (then ``compile()`` makes sure the program has kernels, a
memory plan and legal loop IR), builds an executable from the program and
makes its model. It also owns what is its own: the target names it answers
to, the stages ``--emit`` prints, the schedules that fit it, its tuner and
the numeric rules it spells. ``compile()`` and the CLI ask this registry and
never branch on names; a new backend registers itself with
:func:`register_backend` (docs/adding-a-backend.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from minicomp.errors import UnsupportedError


@dataclass(frozen=True)
class Backend:
    """A code generator: ``build(program, stages, opt_level) -> executable``.

    ``stages`` is the dict of stage texts the build adds to (its source, its
    optimized form); the executable is whatever the backend's model needs
    (None for the interpreter). ``model(program, target, stages,
    executable)`` makes that model, a subclass of
    :class:`minicomp.runtime.CompiledModel`. ``prepare(target, stages)`` runs
    before the passes: it may adjust the target (compile's own copy) and
    returns compile options to set (``passes.manager.CompileOptions`` fields,
    such as ``schedule_threads``). ``schedule`` names the default schedules
    that fit the backend's code: ``"cpu"`` or ``"gpu"``
    (``passes/pipeline_passes.py``).
    """

    name: str
    description: str
    pipeline: tuple[str, ...]
    build: Callable
    runs_kernels: bool = True
    prepare: Callable | None = None  # (target, stages) -> {compile option: value}
    schedule: str = "cpu"
    model: Callable | None = None  # (program, target, stages, executable) -> a runtime.CompiledModel
    # The numeric rules of passes/legalize.py (NUMERIC_RULES) this target spells with an instruction of its
    # own, and how; legalization writes out the others for it.
    numerics: Mapping[str, str] = field(default_factory=dict)
    # The stages ``--emit`` may print from this backend's build (e.g. "c" for stages["c"]).
    emits: tuple[str, ...] = ()
    # Other names ``compile(target=...)`` accepts for this backend ("cuda-emu", CPU names).
    aliases: tuple[str, ...] = ()
    # (name, num_threads, device) -> Target: the target a name means (default: Target.host(name)).
    make_target: Callable | None = None
    # compile(tune=True): (kernels, target, threads, constants, settings, use_cache, chains) -> the tunings; the
    # schedule pass calls it (chains: each reduction chain kernel's tiles, lowered: name -> [(description,
    # kernel)], the rule's first; its tuning's choices is a description). None: the backend cannot be tuned.
    tune: Callable | None = None
    # Does it compile graphs with symbolic sizes (mc.Dim) into code that reads them at each call?
    symbolic: bool = False
    # The whole-model cache: find_model(key) -> the model kept under key, or None; keep_model(key, model)
    # keeps one (compiler.py makes the key). None: each compile runs the passes.
    find_model: Callable | None = None
    keep_model: Callable | None = None


_BACKENDS: dict[str, Backend] = {}


def register_backend(backend: Backend, replace: bool = False) -> Backend:
    """Add ``backend`` to the registry (``replace=True`` to override one)."""
    if backend.model is None:
        raise UnsupportedError(f"backend {backend.name!r} names no model: give Backend(model=...), a function "
                               f"(program, target, stages, executable) -> CompiledModel")
    if backend.name in _BACKENDS and not replace:
        raise UnsupportedError(f"a backend named {backend.name!r} is already registered")
    _BACKENDS[backend.name] = backend
    return backend


def _load_builtin():
    # Importing registers them (once; another module may have imported one already).
    from minicomp.backends import c, cuda, llvm, reference  # noqa: F401


def get_backend(name: str) -> Backend:
    """The backend registered as ``name``; a clear error lists the others."""
    _load_builtin()
    if name not in _BACKENDS:
        raise UnsupportedError(f"unknown target {name!r}; choose one of {', '.join(sorted(_BACKENDS))}")
    return _BACKENDS[name]


def backend_names() -> list[str]:
    """Names of every registered backend."""
    _load_builtin()
    return sorted(_BACKENDS)


def backend_for_name(name: str) -> Backend | None:
    """The backend a target name (its own or an alias) belongs to, or None."""
    _load_builtin()
    return next((b for b in _BACKENDS.values() if name == b.name or name in b.aliases), None)


def target_names() -> list[str]:
    """Every name ``compile(target=...)`` accepts: the backends' names, then their aliases."""
    _load_builtin()
    aliases = [a for b in _BACKENDS.values() for a in b.aliases]
    return sorted(_BACKENDS) + [a for a in dict.fromkeys(aliases) if a not in _BACKENDS]


def numerics_table() -> dict[str, dict[str, str]]:
    """Rule -> backend -> how it spells the rule: its own instruction, or "legalize" (written out as
    selects by ``passes/legalize.py``). Only backends that run kernels are listed."""
    from minicomp.passes.legalize import NUMERIC_RULES

    _load_builtin()
    kernels = [b for _, b in sorted(_BACKENDS.items()) if b.runs_kernels]
    return {rule: {b.name: b.numerics.get(rule, "legalize: written out as selects") for b in kernels}
            for rule in NUMERIC_RULES}


def default_pipeline(target: str = "llvm") -> list[str]:
    """The default pass pipeline of a target's backend, as a list you may edit."""
    return list(get_backend(target).pipeline)
