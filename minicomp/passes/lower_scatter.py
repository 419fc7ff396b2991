"""State a model updates in the caller's memory: ``index_copy`` lowered in place.

A graph input that the model writes (``GraphBuilder.write``, a key/value
cache, torch's in-place ``index_copy_`` on a buffer) is an input and an
output at once. Where its new value is an ``index_copy`` of it, and nothing
else reads the old value, the output can take the input's memory: every
position the index does not name already holds its value, so the kernel
stores only the updated slices,

    for j: p = index[j]; if 0 <= p < length: out[..., p, ...] = updates[..., j, ...]

and a decoding step writes one row of each cache, not the cache. The memory
plan records the pair (``MemoryPlan.written_in_place``), so the output's
table slot is the input's: the caller's array is the kernel's output.

Host targets (llvm, c) write in place. A GPU target computes the value into
a buffer of its own and the call copies it back (``runtime.write_back``):
the caller's array is host memory there.
"""

from __future__ import annotations

from minicomp.ir import dtypes
from minicomp.ir import expr as ex
from minicomp.ir.graph import Graph, Node, Value
from minicomp.ir.loops import For, If, Kernel, Store
from minicomp.ir.opdefs.scatter import wrapped_position
from minicomp.passes.lower import Group, _Lowerer


def writes_in_place(graph: Graph) -> dict[Node, Value]:
    """The ``index_copy`` nodes whose result is written back into the input they copy, where nothing
    else reads that input (or returns it) and the positions and updates are not constants: each
    node -> the input."""
    consumers = graph.consumers()
    found = {}
    for inp, value in graph.written_inputs():
        node = value.producer
        if node is None or node.op != "index_copy" or node.inputs[0] is not inp or inp in node.inputs[1:]:
            continue
        if consumers.get(inp) != [node] or inp in graph.outputs or graph.outputs.count(value) != 1:
            continue
        if any(v in graph.constants for v in node.inputs[1:]):  # (a fixed slot: computed, then copied in)
            continue
        found[node] = inp
    return found


def lower_index_copy_in_place(group: Group, name: str, constants: dict | None = None) -> Kernel:
    """The kernel of a group holding one ``index_copy`` whose output shares its data input's memory:
    stores of the updated slices only, a position outside the axis skipped (the call reports it)."""
    (node,) = group.nodes
    lowerer = _Lowerer(group, name, constants)
    data, index, updates = node.inputs
    axis = node.attrs["axis"]
    index_buf, updates_buf = lowerer.in_bufs[index], lowerer.in_bufs[updates]
    out = lowerer.out_bufs[node.output]
    length = data.shape[axis]
    axes = [ex.fresh_var(f"i{k}_") for k in range(len(updates.shape))]
    j = axes[axis]
    # One position a slice: read, counted from the end if negative, and checked against the axis.
    p = wrapped_position(index_buf, j, length)
    inside = ex.logical_and(ex.ge(p, ex.const(0, dtypes.int64)), ex.lt(p, ex.as_expr(length)))
    stmt = Store(out, tuple(p if k == axis else a for k, a in enumerate(axes)), ex.Load(updates_buf, tuple(axes)))
    for k in reversed(range(len(axes))):
        if k != axis:
            stmt = For(axes[k], updates.shape[k], stmt)
    body = For(j, index.shape[0], If(inside, stmt))
    kernel = Kernel(name, [index_buf, updates_buf], [out], body, group=[node.name], prescheduled=True)
    kernel.param_values = [index, updates, node.output]
    kernel.notes.append(f"written in place into input %{data.name}: only the slices at %{index.name} are stored")
    return kernel
