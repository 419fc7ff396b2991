"""Compiled models on disk: ``model.save(path)`` / ``mc.load(path)``, and a
shared library with a C header (``model.export_library(path)``).

A saved model (``.mcm``) is a zip archive: ``meta.json`` (format, minicomp
and LLVM versions, the CPU and features the code was made for, the input
and output signature, the table slots, the memory plan, the kernel calls),
``code.o`` (the machine code), ``optimized.ll`` (for ``--emit`` and
inspection) and one ``.npy`` per constant. Loading runs no pass and no
LLVM optimization: the object file goes straight into MCJIT. A file from
another minicomp version or format, or for a CPU whose instruction set this
machine lacks, is refused with a clear error.

The shared library links the same module, compiled again as
position-independent code, with the constants (embedded by the assembler's
``.incbin``) and a small C wrapper; its header, named after the library
(``libmlp.so`` -> ``mlp.h``, so that two libraries in one folder keep their
own), declares::

    int mc_run(const void* const* inputs, void* const* outputs);
    void mc_set_num_threads(int n);
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import tempfile
import zipfile

import numpy as np

from minicomp.errors import MinicompError

FORMAT = 1


def _signature(values) -> list[dict]:
    return [{"name": v.name, "shape": list(v.shape), "dtype": v.dtype.name} for v in values]


def save_model(model, path: str) -> None:
    """Write ``model`` (compiled for a CPU) to ``path``."""
    from minicomp import __version__

    jit = model._jit
    if jit is None or getattr(jit, "object_code", None) is None:
        raise MinicompError("only models compiled for the llvm target can be saved")
    import llvmlite.binding as llvm

    graph, slots = model.graph, model._slots
    meta = {
        "format": FORMAT, "minicomp": __version__, "llvm": list(llvm.llvm_version_info),
        "cpu": jit.cpu, "features": jit.features, "name": graph.name,
        "inputs": [dict(s, slot=slots[v]) for s, v in zip(_signature(graph.inputs), graph.inputs)],
        "outputs": [dict(s, slot=slots[v]) for s, v in zip(_signature(graph.outputs), graph.outputs)],
        "constants": [dict(s, slot=slots[v]) for s, v in zip(_signature(graph.constants), graph.constants)],
        "n_slots": len(model._table), "arena_bytes": model.memory_plan.arena_bytes,
        "offsets": [[slots[key], off] for key, off in model.memory_plan.offsets.items()],
        "calls": [[c.name, c.function, list(c.slots)] for c in model._calls],
        "num_threads": model.num_threads,
    }
    try:
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
            z.writestr("meta.json", json.dumps(meta, indent=1))
            z.writestr("code.o", jit.object_code)
            z.writestr("optimized.ll", jit.optimized_ir)
            for c in meta["constants"]:
                buf = io.BytesIO()
                np.save(buf, np.ascontiguousarray(graph.constants[_by_name(graph.constants, c["name"])]))
                z.writestr(f"const/{c['slot']}.npy", buf.getvalue())
    except OSError as exc:
        raise MinicompError(f"cannot write {path}: {exc}") from None


def _by_name(values, name):
    return next(v for v in values if v.name == name)


def load_model(path: str):
    """A CompiledModel from a file written by ``model.save``."""
    from minicomp import __version__
    from minicomp.backends.llvm import JitModule, KernelCall, host_cpu
    from minicomp.ir.graph import Graph, TensorType, Value
    from minicomp.passes.memory import MemoryPlan
    from minicomp.runtime import CompiledModel
    from minicomp.target import Target

    try:
        z = zipfile.ZipFile(path)
        meta = json.loads(z.read("meta.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise MinicompError(f"{path} is not a saved minicomp model: {exc}") from None
    if meta.get("format") != FORMAT or meta.get("minicomp") != __version__:
        raise MinicompError(f"{path} was saved by minicomp {meta.get('minicomp')} (format {meta.get('format')}); "
                            f"this is minicomp {__version__} (format {FORMAT}): compile the model again")
    _, host_features = host_cpu()
    have = set(host_features.split(","))
    missing = [f[1:] for f in meta["features"].split(",") if f.startswith("+") and f not in have]
    if missing:
        raise MinicompError(f"{path} holds code for CPU {meta['cpu']}, which needs {', '.join(missing[:6])}"
                            f"{'...' if len(missing) > 6 else ''}; this machine lacks them: compile it here")

    def values(kind):
        return [Value(s["name"], TensorType(tuple(s["shape"]), s["dtype"])) for s in meta[kind]]

    inputs, constants = values("inputs"), values("constants")
    by_slot = {s["slot"]: v for s, v in zip(meta["inputs"] + meta["constants"], inputs + constants)}
    outputs = [by_slot.get(s["slot"]) or Value(s["name"], TensorType(tuple(s["shape"]), s["dtype"]))
               for s in meta["outputs"]]
    for s, v in zip(meta["outputs"], outputs):
        by_slot.setdefault(s["slot"], v)
    graph = Graph(name=meta["name"])
    graph.inputs, graph.outputs = inputs, outputs
    for s, v in zip(meta["constants"], constants):
        graph.constants[v] = np.load(io.BytesIO(z.read(f"const/{s['slot']}.npy")))
    slots = {v: slot for slot, v in by_slot.items()}
    offsets = {}
    for slot, off in meta["offsets"]:
        key = ("planned", slot)
        slots[key] = slot
        offsets[key] = off
    plan = MemoryPlan(offsets=offsets, arena_bytes=meta["arena_bytes"])
    jit = JitModule.from_object(z.read("code.o"), z.read("optimized.ll").decode(), meta["cpu"], meta["features"])
    target = Target.host("llvm", meta["num_threads"])
    calls = [KernelCall(name, fn, list(sl)) for name, fn, sl in meta["calls"]]
    model = CompiledModel(graph, target, {"llvm_opt": jit.optimized_ir}, plan, jit, calls, slots, meta["n_slots"],
                          graph.constants)
    model.loaded_from = path
    return model


HEADER = """/* {name}: compiled by minicomp {version} for CPU {cpu}. */
#ifndef {guard}
#define {guard}
#ifdef __cplusplus
extern "C" {{
#endif
/* Inputs, in order (C-contiguous arrays):
{inputs}
   Outputs, in order (the caller allocates them):
{outputs} */
int mc_run(const void* const* inputs, void* const* outputs); /* 0 on success, 1 if memory runs out */
void mc_set_num_threads(int n);                              /* threads for parallel loops (default {threads}) */
#ifdef __cplusplus
}}
#endif
#endif
"""

WRAPPER = """#include <stdint.h>
#include <stdlib.h>
#include "model.h"
extern void mc_main(void** table);
extern int32_t mc_num_threads;
extern const unsigned char mc_weights[];
static const int input_slots[] = {{{input_slots}}};
static const int output_slots[] = {{{output_slots}}};
static const int const_slots[] = {{{const_slots}}};
static const long long const_offsets[] = {{{const_offsets}}};
static const int arena_slots[] = {{{arena_slots}}};
static const long long arena_offsets[] = {{{arena_offsets}}};
void mc_set_num_threads(int n) {{ mc_num_threads = n > 0 ? n : 1; }}
int mc_run(const void* const* inputs, void* const* outputs) {{
  void* table[{n_slots}];
  unsigned char* arena = aligned_alloc(64, {arena_alloc});
  if (!arena) return 1;
  for (int i = 0; i < {n_const}; ++i) table[const_slots[i]] = (void*)(mc_weights + const_offsets[i]);
  for (int i = 0; i < {n_arena}; ++i) table[arena_slots[i]] = arena + arena_offsets[i];
  for (int i = 0; i < {n_in}; ++i) table[input_slots[i]] = (void*)inputs[i];
  for (int i = 0; i < {n_out}; ++i) table[output_slots[i]] = outputs[i];
  mc_main(table);
  free(arena);
  return 0;
}}
"""


def _c_list(xs) -> str:
    return ", ".join(str(int(x)) for x in xs) or "0"


def header_name(library_path: str) -> str:
    """The header beside a library: ``libmlp.so`` -> ``mlp.h`` (``mlp.so`` -> ``mlp.h`` too)."""
    stem = os.path.basename(library_path).split(".")[0]
    if stem.startswith("lib") and len(stem) > 3:
        stem = stem[3:]
    return (stem or "model") + ".h"


def export_library(model, path: str) -> str:
    """Link ``model`` into a shared library at ``path`` with its header beside
    it (:func:`header_name`); returns the header's path. Needs a C compiler
    (``CC``, else cc/gcc)."""
    from minicomp import __version__

    jit = model._jit
    if jit is None:
        raise MinicompError("only models compiled for the llvm target can be exported")
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise MinicompError("exporting a shared library needs a C compiler (cc or gcc) on PATH, or CC set")
    graph, slots = model.graph, model._slots
    inputs = list(graph.inputs)
    outputs = list(graph.outputs)
    if set(outputs) & (set(inputs) | set(graph.constants)):
        raise MinicompError("a model whose outputs are its inputs or constants cannot be exported yet")
    blob, const_slots, const_offsets = bytearray(), [], []
    for v, arr in graph.constants.items():
        if v not in slots:
            continue
        blob += b"\0" * ((-len(blob)) % 64)
        const_slots.append(slots[v])
        const_offsets.append(len(blob))
        blob += np.ascontiguousarray(arr).tobytes()
    offsets = list(model.memory_plan.offsets.items())

    def describe(vs):
        return "\n".join(f"     [{k}] {v.name}: {'uint16' if v.dtype.is_narrow_float else v.dtype.c} "
                         f"{list(v.shape)}" for k, v in enumerate(vs)) or "     (none)"

    header_path = os.path.join(os.path.dirname(os.path.abspath(path)), header_name(path))
    guard = "MC_" + re.sub(r"\W", "_", os.path.basename(header_path)).upper()
    header = HEADER.format(guard=guard, name=graph.name, version=__version__, cpu=jit.cpu, inputs=describe(inputs),
                           outputs=describe(outputs), threads=model.num_threads)
    wrapper = WRAPPER.format(
        input_slots=_c_list(slots[v] for v in inputs), output_slots=_c_list(slots[v] for v in outputs),
        const_slots=_c_list(const_slots), const_offsets=_c_list(const_offsets),
        arena_slots=_c_list(slots[k] for k, _ in offsets), arena_offsets=_c_list(o for _, o in offsets),
        n_slots=max(len(model._table), 1), arena_alloc=-(-(model.memory_plan.arena_bytes + 64) // 64) * 64,
        n_const=len(const_slots), n_arena=len(offsets), n_in=len(inputs), n_out=len(outputs))
    with tempfile.TemporaryDirectory() as tmp:
        files = {"model.h": header, "wrapper.c": wrapper,
                 "weights.S": '.section .rodata\n.globl mc_weights\n.balign 64\nmc_weights:\n.incbin "weights.bin"\n'
                              '.section .note.GNU-stack,"",@progbits\n'}
        for name, text in files.items():
            with open(os.path.join(tmp, name), "w") as f:
                f.write(text)
        with open(os.path.join(tmp, "weights.bin"), "wb") as f:
            f.write(bytes(blob))
        with open(os.path.join(tmp, "code.o"), "wb") as f:
            f.write(jit.shared_object_code())
        cmd = [cc, "-shared", "-fPIC", "-O2", "-o", os.path.abspath(path), "wrapper.c", "weights.S", "code.o",
               "-lgomp", "-lm"]
        proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
        if proc.returncode != 0:
            raise MinicompError(f"linking the shared library failed:\n{proc.stderr[-3000:]}")
        shutil.copy(os.path.join(tmp, "model.h"), header_path)
    return header_path
