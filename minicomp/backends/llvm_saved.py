"""Compiled models on disk: ``model.save(path)`` / ``mc.load(path)``, and a
shared library with a C header (``model.export_library(path)``).

A saved model (``.mcm``) is native machine code: loading one runs it, so
load only files you trust (as with pickle). It is a zip archive:
``meta.json`` (format, minicomp and LLVM versions, the CPU and features the
code was made for, the input and output signature, the table slots, the
memory plan, the kernel calls), ``code.o`` (the machine code),
``optimized.ll`` (for ``--emit`` and inspection), one ``.npy`` per
constant, and ``SHA256SUMS``, a digest of every other member. Loading runs
no pass and no LLVM optimization: the object file goes straight into MCJIT,
after every member matched its digest and the description matched itself
and the buffer sizes built into the code (``@mc_slot_bytes``). A file from
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

import hashlib
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
from minicomp.ir.dims import Dim, upper
from minicomp.ir.loops import DIM_SIZES
from minicomp.ir.text import parse_size
from minicomp.runtime import contiguous

FORMAT = 1


def _signature(values) -> list[dict]:
    """Name, shape and dtype of each value; a symbolic size is written as the IR text writes it (batch*seq)."""
    return [{"name": v.name, "shape": [d if isinstance(d, int) else str(d) for d in v.shape], "dtype": v.dtype.name}
            for v in values]


def describe(model) -> dict:
    """What a compiled model is apart from its machine code and constants' values: the versions and CPU it
    was made for, its signature, table slots, memory plan and kernel calls (``meta.json`` of a saved model,
    and of a whole-model cache entry, ``backends/llvm_model_cache.py``)."""
    from minicomp import __version__

    jit, layout = model.native, model.layout
    graph, slots = model.signature, layout.slots
    return {
        "format": FORMAT, "minicomp": __version__,
        "cpu": jit.cpu, "features": jit.features, "name": graph.name,
        "inputs": [dict(s, slot=slots[v]) for s, v in zip(_signature(graph.inputs), graph.inputs)],
        "outputs": [dict(s, slot=slots[v]) for s, v in zip(_signature(graph.outputs), graph.outputs)],
        "constants": [dict(s, slot=slots[v]) for s, v in zip(_signature(graph.constants), graph.constants)],
        "n_slots": max(layout.n_slots, 1), "arena_bytes": layout.memory_plan.arena_bytes,
        "offsets": [[slots[key], off] for key, off in layout.memory_plan.offsets.items()],
        "calls": [[c.name, c.function, list(c.slots)] for c in layout.calls],
        "num_threads": model.num_threads,
        # Symbolic sizes (mc.Dim): each dimension's range, and the slot of the sizes the kernels read.
        "dims": [list(d) for d in graph.dims()],
        "dim_sizes_slot": slots.get(DIM_SIZES),
        # Outputs written back into inputs (a cache): [output position, input position].
        "writes": [[o, i] for o, i in sorted(graph.writes.items())],
        # Outputs checked at each call: [output position, low, high, message].
        "checks": [[o, *check] for o, check in sorted(graph.checks.items())],
    }


def save_model(model, path: str) -> None:
    """Write ``model`` (compiled for a CPU) to ``path``."""
    jit, graph = model.native, model.signature
    if getattr(jit, "object_code", None) is None:
        raise MinicompError("this model's machine code was not kept (compile it again to save it)")
    import llvmlite.binding as llvm

    meta = dict(describe(model), llvm=list(llvm.llvm_version_info))
    members = {"meta.json": json.dumps(meta, indent=1).encode(), "code.o": jit.object_code,
               "optimized.ll": jit.optimized_ir.encode()}
    for c in meta["constants"]:
        buf = io.BytesIO()
        np.save(buf, contiguous(graph.constants[_by_name(graph.constants, c["name"])]))  # a scalar stays 0-d
        members[f"const/{c['slot']}.npy"] = buf.getvalue()
    sums = "".join(f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in members.items())
    try:
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
            for name, data in members.items():
                z.writestr(name, data)
            z.writestr(DIGESTS, sums)
    except OSError as exc:
        raise MinicompError(f"cannot write {path}: {exc}") from None


def _by_name(values, name):
    return next(v for v in values if v.name == name)


def load_model(path: str):
    """A CompiledModel from a file written by ``model.save``.

    Nothing in the file is trusted to the point of a crash: every member must
    match the digest the file lists for it, the description (``meta.json``)
    must agree with itself and with the buffer sizes the machine code was made
    for (``@mc_slot_bytes``), and every failure is a MinicompError. Loading
    still runs the file's machine code: load only files you trust."""
    from minicomp import __version__
    from minicomp.backends.llvm import JitModule, host_cpu

    members = _read_members(path)
    try:
        meta = json.loads(members["meta.json"])
    except ValueError as exc:
        raise MinicompError(f"{path} is not a saved minicomp model: meta.json: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("minicomp") != __version__:
        got = meta if isinstance(meta, dict) else {}
        raise MinicompError(f"{path} was saved by minicomp {got.get('minicomp')} (format {got.get('format')}); "
                            f"this is minicomp {__version__} (format {FORMAT}): compile the model again")
    _check_digests(members, path)
    check_meta(meta, path)
    for s in meta["constants"]:
        if f"const/{s['slot']}.npy" not in members:
            raise MinicompError(f"{path} is damaged: constant {s['name']} has no member const/{s['slot']}.npy")
    if not {"code.o", "optimized.ll"} <= set(members):
        raise MinicompError(f"{path} is damaged: the machine code (code.o) or its IR (optimized.ll) is missing")
    _, host_features = host_cpu()
    have = set(host_features.split(","))
    missing = [f[1:] for f in meta["features"].split(",") if f.startswith("+") and f not in have]
    if missing:
        raise MinicompError(f"{path} holds code for CPU {meta['cpu']}, which needs {', '.join(missing[:6])}"
                            f"{'...' if len(missing) > 6 else ''}; this machine lacks them: compile it here")

    try:
        optimized = members["optimized.ll"].decode()
    except UnicodeDecodeError:
        raise MinicompError(f"{path}: optimized.ll is not text") from None
    jit = JitModule.from_object(members["code.o"], optimized, meta["cpu"], meta["features"])
    model = rebuild(meta, lambda desc, value: _constant(members, desc, value, path), jit, path)
    model.loaded_from = path
    return model


def rebuild(meta: dict, constant, jit, path: str):
    """The model that ``meta`` (checked by :func:`check_meta`) describes, running the machine code ``jit``
    once it matched the description; ``constant(desc, value)`` gives each constant's array."""
    from minicomp.backends.llvm import LLVMModel
    from minicomp.ir.graph import Graph, TensorType, Value
    from minicomp.passes.memory import MemoryPlan
    from minicomp.runtime import KernelCall, TableLayout
    from minicomp.stages import Stages
    from minicomp.target import Target

    dims = {name: Dim(name, lo, hi) for name, lo, hi in meta["dims"]}

    def shape(desc):
        try:
            return tuple(d if isinstance(d, int) else parse_size(d, dims) for d in desc["shape"])
        except MinicompError as exc:
            raise MinicompError(f"{path} is damaged: {desc['name']}'s shape {desc['shape']}: {exc}") from None

    def values(kind):
        return [Value(s["name"], TensorType(shape(s), s["dtype"])) for s in meta[kind]]

    inputs, constants = values("inputs"), values("constants")
    by_slot = {s["slot"]: v for s, v in zip(meta["inputs"] + meta["constants"], inputs + constants)}
    outputs = []
    for s in meta["outputs"]:  # an output listed twice is one value, as it was compiled (one slot)
        if s["slot"] not in by_slot:
            by_slot[s["slot"]] = Value(s["name"], TensorType(shape(s), s["dtype"]))
        outputs.append(by_slot[s["slot"]])
    graph = Graph(name=meta["name"])
    graph.inputs, graph.outputs = inputs, outputs
    graph.writes = {o: i for o, i in meta.get("writes", [])}
    graph.checks = {o: (low, high, message) for o, low, high, message in meta.get("checks", [])}
    for s, v in zip(meta["constants"], constants):
        graph.constants[v] = constant(s, v)
    slots = {v: slot for slot, v in by_slot.items()}
    if meta["dims"]:
        slots[DIM_SIZES] = meta["dim_sizes_slot"]
    offsets = {}
    for slot, off in meta["offsets"]:
        key = ("planned", slot)
        slots[key] = slot
        offsets[key] = off
    plan = MemoryPlan(offsets=offsets, arena_bytes=meta["arena_bytes"])
    _check_against_the_code(jit, meta, path)
    target = Target.host("llvm", meta["num_threads"])
    calls = tuple(KernelCall(name, fn, list(sl)) for name, fn, sl in meta["calls"])
    stages = Stages()
    stages.defer("llvm_opt", lambda: jit.optimized_ir)  # (read and decompressed only when asked for)
    return LLVMModel(graph, target, stages, plan, jit, TableLayout(slots, meta["n_slots"], calls, plan),
                     graph.constants)


DIGESTS = "SHA256SUMS"


def _read_members(path: str) -> dict[str, bytes]:
    """Every member of the archive (checked by :func:`_check_digests` once the version is known)."""
    try:
        with zipfile.ZipFile(path) as z:
            members = {name: z.read(name) for name in z.namelist()}
    except (OSError, zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, RuntimeError) as exc:
        raise MinicompError(f"{path} is not a saved minicomp model (or it is damaged): {exc}") from None
    if "meta.json" not in members:
        raise MinicompError(f"{path} is not a saved minicomp model: it has no meta.json")
    return members


def _check_digests(members: dict[str, bytes], path: str) -> None:
    """Each member matches the digest the archive lists for it, and none is missing or extra."""
    listed = {}
    try:
        for line in members[DIGESTS].decode("ascii").splitlines():
            digest, name = line.split("  ", 1)
            listed[name] = digest
    except (KeyError, UnicodeDecodeError, ValueError):
        raise MinicompError(f"{path} is damaged: its list of digests ({DIGESTS}) is missing or unreadable") from None
    names = set(members) - {DIGESTS}
    if set(listed) != names:
        odd = sorted(set(listed) ^ names)
        raise MinicompError(f"{path} is damaged: members {', '.join(odd[:5])} are missing or not listed")
    for name in names:
        if hashlib.sha256(members[name]).hexdigest() != listed[name]:
            raise MinicompError(f"{path} is damaged: {name} does not match its digest")


def check_meta(meta: dict, path: str) -> None:
    """The description agrees with itself: every field of the right kind, slots inside the table, buffers
    inside the arena, a constant member for every constant."""
    from minicomp.ir.dtypes import ALL_DTYPES

    dtype_names = {d.name for d in ALL_DTYPES}

    def bad(what: str):
        raise MinicompError(f"{path} is damaged: meta.json: {what}")

    def whole(x, lo=0, hi=None) -> bool:
        return isinstance(x, int) and not isinstance(x, bool) and x >= lo and (hi is None or x <= hi)

    for key, kind in (("cpu", str), ("features", str), ("name", str), ("inputs", list), ("outputs", list),
                      ("constants", list), ("offsets", list), ("calls", list)):
        if not isinstance(meta.get(key), kind):
            bad(f"'{key}' is missing or not a {kind.__name__}")
    writes = meta.get("writes", [])
    if not isinstance(writes, list) or not all(
            isinstance(w, list) and len(w) == 2 and whole(w[0], 0, len(meta["outputs"]) - 1)
            and whole(w[1], 0, len(meta["inputs"]) - 1) for w in writes):
        bad("'writes' is not a list of [output, input] positions")
    checks = meta.get("checks", [])
    if not isinstance(checks, list) or not all(
            isinstance(c, list) and len(c) == 4 and whole(c[0], 0, len(meta["outputs"]) - 1)
            and isinstance(c[1], int) and isinstance(c[2], int) and isinstance(c[3], str) for c in checks):
        bad("'checks' is not a list of [output, low, high, message]")
    n_slots = meta.get("n_slots")
    if not whole(n_slots, 1, 1 << 24) or not whole(meta.get("arena_bytes"), 0, 1 << 46) or \
            not whole(meta.get("num_threads"), 1, 4096):
        bad("n_slots, arena_bytes or num_threads is not a whole number in range")
    dims = meta.get("dims")
    if not isinstance(dims, list) or not all(
            isinstance(d, list) and len(d) == 3 and isinstance(d[0], str) and d[0].isidentifier()
            and whole(d[1], 0, 1 << 40) and whole(d[2], d[1], 1 << 40) for d in dims):
        bad("'dims' is not a list of [name, min, max]")
    used = set()
    if dims:
        if not whole(meta.get("dim_sizes_slot"), 0, n_slots - 1):
            bad("the slot of the symbolic sizes is missing or outside the table")
        used.add(meta["dim_sizes_slot"])
    names = {d[0] for d in dims}
    for kind in ("inputs", "outputs", "constants"):
        for s in meta[kind]:
            if not (isinstance(s, dict) and isinstance(s.get("name"), str) and s.get("dtype") in dtype_names
                    and isinstance(s.get("shape"), list)
                    and all(whole(d, 0, 1 << 40) or (kind != "constants" and isinstance(d, str)
                                                     and set(re.findall(r"[A-Za-z_]\w*", d)) <= names)
                            for d in s["shape"])
                    and whole(s.get("slot"), 0, n_slots - 1)):
                bad(f"{kind}: {str(s)[:80]} is not a buffer description")
            if kind != "outputs" and s["slot"] in used:
                bad(f"slot {s['slot']} is given twice")
            used.add(s["slot"])
    for entry in meta["offsets"]:
        if not (isinstance(entry, list) and len(entry) == 2 and whole(entry[0], 0, n_slots - 1)
                and whole(entry[1], 0, meta["arena_bytes"])) or entry[0] in used:
            bad(f"arena entry {str(entry)[:40]}: a slot inside the table and an offset inside the arena")
        used.add(entry[0])
    for call in meta["calls"]:
        if not (isinstance(call, list) and len(call) == 3 and isinstance(call[0], str) and isinstance(call[1], str)
                and isinstance(call[2], list) and all(whole(x, 0, n_slots - 1) for x in call[2])):
            bad(f"kernel call {str(call)[:60]}")


def _constant(members: dict, desc: dict, value, path: str) -> np.ndarray:
    """A constant's array, of exactly the shape and dtype the description gives (no pickles)."""
    try:
        arr = np.load(io.BytesIO(members[f"const/{desc['slot']}.npy"]), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise MinicompError(f"{path} is damaged: constant {desc['name']}: {exc}") from None
    if arr.shape != value.shape or arr.dtype != value.dtype.numpy:
        raise MinicompError(f"{path} is damaged: constant {desc['name']} holds {arr.dtype}{list(arr.shape)}, "
                            f"not the {value.type} the model declares")
    return contiguous(arr)


def _check_against_the_code(jit, meta: dict, path: str) -> None:
    """Every buffer the description gives is as large as the machine code reads and writes it, and every
    slot the code uses is given one: checked against ``@mc_slot_bytes``, which the code generator put in
    the code itself (an edited description once made the code write 1 MiB into a 4-byte output)."""
    import ctypes

    from minicomp.ir.dtypes import as_dtype

    try:
        n = ctypes.c_int64.from_address(jit.global_address("mc_slot_count")).value
        code_bytes = list((ctypes.c_int64 * n).from_address(jit.global_address("mc_slot_bytes")))
    except (ValueError, OSError, RuntimeError):
        raise MinicompError(f"{path}: the machine code lacks its buffer sizes (@mc_slot_bytes): save it "
                            f"again with this minicomp") from None
    if n > meta["n_slots"]:
        raise MinicompError(f"{path} is damaged: the code uses {n} table slots, the description has "
                            f"{meta['n_slots']}")
    given = {}
    dims = {name: Dim(name, lo, hi) for name, lo, hi in meta["dims"]}
    if dims:
        given[meta["dim_sizes_slot"]] = (8 * len(dims), "the symbolic sizes")
    for kind in ("inputs", "outputs", "constants"):
        for s in meta[kind]:
            size = as_dtype(s["dtype"]).itemsize
            for d in s["shape"]:  # a symbolic size at its largest, as the code was planned
                size *= d if isinstance(d, int) else upper(parse_size(d, dims))
            given[s["slot"]] = (size, f"{kind[:-1]} {s['name']}")
    for slot, nbytes in enumerate(code_bytes):
        if slot in given and nbytes and given[slot][0] != nbytes:
            raise MinicompError(f"{path} is damaged: {given[slot][1]} is described as {given[slot][0]} bytes, "
                                f"but the code reads and writes {nbytes}")
    planned = dict((slot, off) for slot, off in meta["offsets"])
    for slot, off in planned.items():
        nbytes = code_bytes[slot] if slot < n else 0
        if off + nbytes > meta["arena_bytes"]:
            raise MinicompError(f"{path} is damaged: the buffer of slot {slot} ({nbytes} bytes at offset {off}) "
                                f"does not fit the arena of {meta['arena_bytes']} bytes")
    unbound = [slot for slot, nbytes in enumerate(code_bytes) if nbytes and slot not in given and slot not in planned]
    if unbound:
        raise MinicompError(f"{path} is damaged: table slots {unbound[:5]} that the code uses have no buffer")


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
{run}
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
{run_head} {{
  void* table[{n_slots}];
{check_sizes}  unsigned char* arena = aligned_alloc(64, {arena_alloc});
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


def _run_function(dims: list, sizes_slot: int | None) -> tuple[str, str, str]:
    """``mc_run``'s head, its declaration for the header (with what it returns), and the lines that
    check and bind the sizes of a model's symbolic dimensions (none for a static model). A symbolic
    model takes them first: ``sizes[k]`` is the size of dimension ``k`` at this call (the header lists
    them); the buffers are allocated at the largest sizes."""
    if not dims:
        head = "int mc_run(const void* const* inputs, void* const* outputs)"
        return head, f"{head}; /* 0 on success, 1 if memory runs out */", ""
    head = "int mc_run(const int64_t* sizes, const void* const* inputs, void* const* outputs)"
    listed = "\n".join(f"     sizes[{k}]: {name}, from {lo} to {hi}" for k, (name, lo, hi) in enumerate(dims))
    decl = (f"/* The sizes of the symbolic dimensions at this call, in order (the shapes above name them):\n"
            f"{listed} */\n#include <stdint.h>\n#define MC_NUM_DIMS {len(dims)}\n"
            f"{head};\n/* 0 on success, 1 if memory runs out, 2 if a size is outside its range */")
    los, his = _c_list(lo for _, lo, _ in dims), _c_list(hi for _, _, hi in dims)
    check = (f"  static const int64_t lo[] = {{{los}}}, hi[] = {{{his}}};\n"
             f"  for (int k = 0; k < {len(dims)}; ++k) if (sizes[k] < lo[k] || sizes[k] > hi[k]) return 2;\n"
             f"  table[{sizes_slot}] = (void*)sizes;\n")
    return head, decl, check


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
    from minicomp.runtime import refuse_exporting_writes

    refuse_exporting_writes(model.signature, "export_library")
    jit, layout = model.native, model.layout
    from minicomp.backends.host_cc import which_compiler

    cc = which_compiler("CC", ("cc", "gcc"))
    if not cc:
        raise MinicompError("exporting a shared library needs a C compiler (cc or gcc) on PATH, or CC set")
    graph, slots = model.signature, layout.slots
    inputs = list(graph.inputs)
    outputs = list(graph.outputs)
    if set(outputs) & (set(inputs) | set(graph.constants)):
        raise MinicompError("a model whose outputs are its inputs or constants cannot be exported yet")
    blob, placed = layout.weights(graph.constants)
    const_slots, const_offsets = [s for s, _ in placed], [off for _, off in placed]
    offsets = list(layout.memory_plan.offsets.items())

    def describe(vs):
        return "\n".join(f"     [{k}] {v.name}: {'uint16' if v.dtype.is_narrow_float else v.dtype.c} "
                         f"[{', '.join(map(str, v.shape))}]" for k, v in enumerate(vs)) or "     (none)"

    header_path = os.path.join(os.path.dirname(os.path.abspath(path)), header_name(path))
    guard = "MC_" + re.sub(r"\W", "_", os.path.basename(header_path)).upper()
    run_head, run_decl, check_sizes = _run_function(graph.dims(), layout.slots.get(DIM_SIZES))
    header = HEADER.format(guard=guard, name=graph.name, version=__version__, cpu=jit.cpu, inputs=describe(inputs),
                           outputs=describe(outputs), threads=model.num_threads, run=run_decl)
    wrapper = WRAPPER.format(run_head=run_head, check_sizes=check_sizes,
        input_slots=_c_list(slots[v] for v in inputs), output_slots=_c_list(slots[v] for v in outputs),
        const_slots=_c_list(const_slots), const_offsets=_c_list(const_offsets),
        arena_slots=_c_list(slots[k] for k, _ in offsets), arena_offsets=_c_list(o for _, o in offsets),
        n_slots=max(layout.n_slots, 1), arena_alloc=-(-(layout.memory_plan.arena_bytes + 64) // 64) * 64,
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
