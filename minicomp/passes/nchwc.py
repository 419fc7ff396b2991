"""The ``nchwc`` pass: convolution networks in the channel-blocked layout.

Every 2-D convolution with constant weights, dense, grouped or depthwise,
becomes a ``conv2d_nchwc`` that writes its output as (N, C/b, H, W, b)
(layout and ops: ``ir/opdefs/nchwc.py``); a grouped one takes blocks that
divide its groups (:func:`_grouping`). The layout then flows on through
every op that can keep it:

- pointwise ops (relu, clip, add of a residual, a per-channel scale: any op
  whose compute reads each non-constant input at the output's own position,
  or, for a gate of one value per channel, at its channel); their constants
  are re-laid once;
- max and average pooling, global average pooling (and a mean over both
  spatial axes, as squeeze-and-excitation blocks write it), inference batch
  norm;
- concatenation of channels, when the inputs' channel counts fit one block;
- the next convolution, which reads the blocks directly.

Any other reader (flatten, the classifier, LRN, a channel shuffle, a graph
output) gets the plain layout back through one ``from_nchwc`` node, made
once per value however many readers need it. A convolution whose input is
plain reads it as it is (weights blocked with ``bi = 1``), so the first
convolution of a network needs no conversion of the image.

The block (:func:`channel_block`) is 32 channels where the count allows,
else 16, else all the channels (up to 64, in multiples of 8), else, for a
convolution's output, blocks of 32 or 16 with the last one padded
(:func:`padded_block`: MobileNetV3's 72 and 120 channels); with 16 lanes
(AVX-512) a 32-channel block is two vectors, so a register tile of 8 pixels
x 32 channels has the shape of the matrix-product tile (one weight row of two
vectors, one broadcast input value per pixel), where a 16-channel block
gives a tile of one vector, one broadcast per multiply-add. Readers may ask
for smaller blocks, and a convolution whose output every reader needs plain
stays plain (:func:`_readers`); so does one that no block fits.

A padded block's padding lanes are computed like channels and dropped by
``from_nchwc``: a convolution writes zeros there (zero weights and bias) and
reads them with zero weights, so they must stay finite (0 * inf is NaN). The
ops they pass through are those that keep finite values finite
(:data:`FINITE_OPS`, and division by a constant without zeros); any other
reader gets the plain layout.
"""

from __future__ import annotations

import math

import numpy as np

from minicomp.ir import expr as ex
from minicomp.ir.compute import Placeholder
from minicomp.ir.graph import Graph, Value
from minicomp.ir.opdefs.nchwc import block_array, block_weights, padded_count
from minicomp.ir.ops import get_op
from minicomp.passes.manager import register_pass
from minicomp.passes.rewrite import Rewriter

BLOCKS = (32, 16)
DEPTHWISE_BLOCK = 16
MIN_GROUP_BLOCK = 16  # a grouped convolution's block: at least a vector
WHOLE_MAX = 64


def channel_block(channels: int) -> int | None:
    """The block for ``channels``: the largest of :data:`BLOCKS` that divides
    it; else, for up to :data:`WHOLE_MAX` channels in multiples of 8, all of
    them (one block: NHWC): blocks of 8 are half a vector, and one block of
    all the channels measured faster (docs/measurements.md)."""
    block = next((b for b in BLOCKS if channels % b == 0), None)
    if block is None and channels % 8 == 0 and channels <= WHOLE_MAX:
        return channels
    return block


def padded_block(channels: int) -> int | None:
    """For a convolution's output of more than :data:`WHOLE_MAX` channels that no block
    divides: blocks of 16, the last one padded, or of 32 where that pads no more
    (120 channels: 4 x 32), at most 15 padding channels (under a quarter's more work)."""
    if channels <= WHOLE_MAX or channel_block(channels) is not None:
        return None
    return 32 if padded_count(channels, 32) == padded_count(channels, 16) else 16


def output_block(channels: int) -> int | None:
    """The block a convolution writes ``channels`` in: :func:`channel_block`, else :func:`padded_block`."""
    return channel_block(channels) or padded_block(channels)


# Ops that keep finite values finite, which a padded block's padding lanes may pass through.
FINITE_OPS = frozenset({"add", "sub", "mul", "maximum", "minimum", "relu", "leaky_relu", "clip", "sigmoid",
                        "tanh", "silu", "gelu", "erf", "neg", "abs", "floor"})


@register_pass("nchwc")
def nchwc(graph: Graph) -> Graph:
    """Run 2-D convolution networks in the channel-blocked layout NCHW[b]c,
    converting back only where an op needs the plain layout."""
    return _Layout(graph).run()


class _Layout:
    """One walk over the graph, tracking the blocked form of each value."""

    def __init__(self, graph: Graph):
        self.rw = Rewriter(graph)
        self.constants = self.rw.graph.constants
        self.blocked: dict[Value, Value] = {}  # original plain value -> its blocked replacement
        self.plain: dict[Value, Value] = {}  # original plain value -> the from_nchwc made for it
        self.names: dict[Value, str] = {}  # original value -> the name its node had
        self.kinds = {n.name: _layout_kind(n, graph.constants) for n in graph.nodes}
        consumers = graph.consumers()
        self.wishes, self.needs_plain = _readers(graph, self.kinds, consumers)
        self.readers = {v.name: rs for v, rs in consumers.items()}  # by value name, as above
        self.lanes_of: dict[str, int] = {}  # value name -> the lanes of its blocked form

    def run(self) -> Graph:
        for node in self.rw.nodes():
            out = self._blocked_form(node)
            if out is None:
                node.inputs = tuple(self.as_plain(v) for v in node.inputs)
                self.rw.keep(node)
            else:
                self.blocked[node.output] = out
                self.lanes_of[node.output.name] = out.shape[-1]
                self.names[node.output] = node.name
                self.rw.release(node)
        self.rw.graph.outputs = [self.as_plain(v) for v in self.rw.graph.outputs]
        return self.rw.finish()

    # -- conversions ------------------------------------------------------------------------

    def lanes(self, v: Value) -> int | None:
        b = self.blocked.get(v)
        return None if b is None else b.shape[-1]

    def padded(self, v: Value) -> bool:
        """Whether ``v``'s blocked form has a padded last block."""
        b = self.blocked.get(v)
        return b is not None and b.shape[1] * b.shape[-1] != v.shape[1]

    def as_plain(self, v: Value) -> Value:
        """``v`` in the plain layout: itself, or one from_nchwc of its blocked form."""
        if v not in self.blocked:
            return v
        if v not in self.plain:
            channels = {"channels": v.shape[1]} if self.padded(v) else {}
            self.plain[v] = self.rw.add("from_nchwc", [self.blocked[v]], self.names[v], **channels)
        return self.plain[v]

    def as_blocked(self, v: Value, block: int) -> Value:
        """``v`` blocked by ``block``: its blocked form, or a to_nchwc of the plain one."""
        if self.lanes(v) == block:
            return self.blocked[v]
        name = f"{self.names.get(v, v.name)}_nchw{block}c"
        return self.rw.add("to_nchwc", [self.as_plain(v)], name, block=block)

    # -- ops ------------------------------------------------------------------------------------

    def _blocked_form(self, node) -> Value | None:
        """The blocked replacement of ``node``'s output, or None to keep it plain."""
        kind = self.kinds[node.name]
        if kind == "conv":
            return None if node.output.name in self.needs_plain else self._conv(node)
        x = node.inputs[0] if node.inputs else None
        if kind is None or self.lanes(x) is None:
            return None  # only a blocked input carries the layout on
        if x.shape != node.output.shape and kind == "keeps":
            # a squeeze-and-excitation's gate first (gate * map, as torchvision writes it): the
            # blocks are the map's, and the gate's few values are re-blocked, not the whole map
            x = next((v for v in node.inputs if v.shape == node.output.shape and self.lanes(v)), x)
        b = self.lanes(x)
        if node.op in ("max_pool2d", "avg_pool2d", "global_avg_pool"):
            return self.rw.add(f"{node.op}_nchwc", [self.blocked[x]], node.name, **dict(node.attrs))
        if _is_global_mean(node):  # a squeeze-and-excitation's pool, written as ReduceMean
            return self.rw.add("global_avg_pool_nchwc", [self.blocked[x]], node.name)
        if node.op == "batch_norm":
            return self._batch_norm(node, b)
        if node.op == "concat":
            return self._concat(node)
        if any(self.padded(v) for v in node.inputs) and not _finite_on_finite(node, self.constants):
            return None
        return self._pointwise(node, b)

    def _conv(self, node) -> Value:
        x, w = node.inputs[0], node.inputs[1]
        bias = node.inputs[2] if len(node.inputs) == 3 else None
        co, attrs, weights = node.output.shape[1], dict(node.attrs), self.constants[w]
        depthwise = _is_depthwise(node)
        group_block = None  # a grouped convolution's block (its input's too)
        if attrs["groups"] > 1 and not depthwise:
            attrs["groups"], group_block = _grouping(node)
            weights = _merged_groups(weights, node.attrs["groups"], attrs["groups"])
        bo = group_block or output_block(co)
        group_out = co if depthwise else co // attrs["groups"]  # the channels an output block must lie within
        wish = DEPTHWISE_BLOCK if depthwise else self.wishes.get(node.output.name, bo)
        if node.output.shape[2:] == (1, 1):  # perhaps a squeeze-and-excitation's gate
            wish = min(wish, self._gated_map_lanes(node.output.name, node.output.shape) or wish)
        if wish < bo and (group_out % wish == 0 or (co % bo and bo % wish == 0)):  # (a padded block may shrink)
            bo = wish
        group_in = x.shape[1] // attrs["groups"]
        if depthwise:  # the input takes the output's blocks, padding lanes and all
            src, bi = self.as_blocked(x, bo), 1
            attrs["groups"] = padded_count(co, bo)
        elif self.lanes(x) is not None and (attrs["groups"] == 1 or group_in % self.lanes(x) == 0):
            src, bi = self.blocked[x], self.lanes(x)
        elif self.lanes(x) is not None:  # blocks that straddle a grouped convolution's groups
            src, bi = self.as_blocked(x, group_block), group_block
        else:
            src, bi = x, 1  # plain input: one broadcast value per input channel
        inputs = [src, self.rw.constant(block_weights(weights, bi, bo), f"{node.name}_w_nchwc")]
        if bias is not None:
            inputs.append(self.rw.constant(block_array(self.constants[bias].reshape(1, co), bo)[0],
                                           f"{node.name}_b_nchwc"))
        return self.rw.add("conv2d_nchwc", inputs, node.name, **attrs)

    def _gated_map_lanes(self, name: str, shape) -> int | None:
        """The lanes of the map that the per-channel value ``name`` (a squeeze-and-excitation's
        gate) multiplies, directly or through pointwise ops (its sigmoid), where that map is
        already blocked: the gate's convolution then writes the same blocks, and the gate needs
        no re-blocking before the multiply."""
        for r in self.readers.get(name, []):
            if self.kinds[r.name] != "keeps" or r.op in _WISH_STOPS:
                continue
            if r.output.shape == shape:
                lanes = self._gated_map_lanes(r.output.name, shape)
            else:
                lanes = next((self.lanes_of.get(u.name) for u in r.inputs if u.shape == r.output.shape), None)
            if lanes:
                return lanes
        return None

    def _batch_norm(self, node, b: int) -> Value:
        """Inference batch norm as one per-channel multiply and add, constants folded."""
        scale, bias, mean, var = (self.constants[v].astype(np.float64) for v in node.inputs[1:])
        k = scale / np.sqrt(var + node.attrs["epsilon"])
        dt = node.output.dtype.numpy

        def per_channel(values, tag):
            return self.rw.constant(block_array(values.astype(dt).reshape(1, -1, 1, 1), b), f"{node.name}_{tag}")

        scaled = self.rw.add("mul", [self.blocked[node.inputs[0]], per_channel(k, "k")], f"{node.name}_scaled")
        return self.rw.add("add", [scaled, per_channel(bias - mean * k, "shift")], node.name)

    def _concat(self, node) -> Value:
        b = common_block(node.inputs)
        return self.rw.add("concat", [self.as_blocked(v, b) for v in node.inputs], node.name, axis=1)

    def _pointwise(self, node, b: int) -> Value:
        inputs = []
        for v in node.inputs:
            if v in self.constants:
                inputs.append(self.rw.constant(_blocked_constant(self.constants[v], b), f"{v.name}_nchw{b}c"))
            else:
                inputs.append(self.as_blocked(v, b))
        return self.rw.add(node.op, inputs, node.name, **dict(node.attrs))


def _layout_kind(node, constants) -> str | None:
    """``"conv"`` for a convolution the pass can block (constant weights, dense
    or depthwise, a block for its output channels); ``"keeps"`` for an op that
    keeps a blocked input blocked; None for an op that needs the plain layout."""
    if len(node.outputs) != 1 or node.output.type.rank != 4:
        return None
    if node.op == "conv2d":
        co, groups = node.output.shape[1], node.attrs["groups"]
        if not all(v in constants for v in node.inputs[1:]) or output_block(co) is None:
            return None
        if groups == 1 or _is_depthwise(node):
            return "conv"
        return "conv" if _grouping(node) is not None else None
    if node.op in ("max_pool2d", "avg_pool2d", "global_avg_pool") or _is_global_mean(node):
        return "keeps"
    if node.op == "batch_norm":
        return "keeps" if all(v in constants for v in node.inputs[1:]) else None
    if node.op == "concat":
        return "keeps" if node.attrs["axis"] == 1 and common_block(node.inputs) else None
    return "keeps" if _is_pointwise(node, constants) else None


def _readers(graph: Graph, kinds: dict, readers: dict) -> tuple[dict[str, int], set[str]]:
    """What the readers of each value ask of it, by value name (the pass works
    on a copy of the graph):

    - a smaller block (``wishes``): a depthwise convolution asks for
      :data:`DEPTHWISE_BLOCK`, a concatenation for the largest block that
      divides every input's channels, and pointwise ops (relu, clip, batch
      norm) pass the wish on to their input. A depthwise convolution is one
      vector load per multiply-add, so it gains nothing from a two-vector
      block, and 16-channel blocks give it twice the blocks to share between
      threads (docs/measurements.md). A convolution that writes the block
      its reader wants saves a re-blocking pass;
    - the plain layout (``plain``): a value all of whose readers need it (LRN,
      a reshape, a graph output), directly or through pointwise ops and pools
      (a pool before the LRN; not a global pool or a concatenation, after
      which converting costs next to nothing). The convolution writing it
      stays plain, so that the LRN and pool fuse into it instead of reading
      through a conversion (docs/measurements.md)."""
    outputs = {v.name for v in graph.outputs}
    wishes: dict[str, int] = {}
    plain: set[str] = set()

    def wish(v, block):
        wishes[v.name] = min(block, wishes.get(v.name, block))

    for node in reversed(graph.nodes):
        for out in node.outputs:
            asks = [True] if out.name in outputs else []
            for r in readers.get(out, []):
                kind = kinds[r.name]
                asks.append(kind is None or (kind == "keeps" and r.op not in _SHRINKING and r.output.name in plain))
            if asks and all(asks):
                plain.add(out.name)
        moving = [v for v in node.inputs if v not in graph.constants]
        kind = kinds[node.name]
        if kind == "conv" and _is_depthwise(node):
            wish(moving[0], DEPTHWISE_BLOCK)
        elif kind == "conv" and node.attrs["groups"] > 1:
            wish(moving[0], _grouping(node)[1])
        elif node.op == "concat" and kind == "keeps":
            for v in moving:
                wish(v, common_block(node.inputs))
        elif kind == "keeps" and node.op not in _WISH_STOPS and node.output.name in wishes:
            for v in moving:
                if v.shape == node.output.shape:
                    wish(v, wishes[node.output.name])
    return wishes, plain


# Readers whose input blocks are their own choice, so a wish for their output
# does not pass to their input: pools change the map, concatenation the channels.
_WISH_STOPS = ("max_pool2d", "avg_pool2d", "global_avg_pool", "mean", "concat")
# Readers after which the plain layout costs next to nothing: one conversion
# of a global pool's C values, or of a concatenation's output instead of each input.
_SHRINKING = ("global_avg_pool", "mean", "concat")


def _is_depthwise(node) -> bool:
    """A convolution of one input and one output channel per group."""
    groups = node.attrs["groups"]
    return groups > 1 and groups == node.inputs[0].shape[1] == node.output.shape[1]


def _grouping(node) -> tuple[int, int] | None:
    """How a grouped convolution (RegNet, ResNeXt) runs blocked: (groups, block), the block dividing
    the width of every group, in and out, so that each output block reads its own group's input
    blocks. Groups narrower than a vector's 16 channels are merged, two or four neighbours into one
    whose weights are zero between them: twice or four times the multiply-adds, in whole vectors
    (ResNeXt's groups of 4 and 8); where the count of groups does not allow it (RegNet-Y's 13 groups
    of 8), blocks of 8. None where no block fits (groups of 120 channels)."""
    groups = node.attrs["groups"]
    ci, co = node.inputs[0].shape[1], node.output.shape[1]

    def block(merge):
        return channel_block(math.gcd(ci * merge // groups, co * merge // groups))

    if min(ci, co) // groups < MIN_GROUP_BLOCK:
        for merge in (2, 4):
            if groups % merge == 0 and (block(merge) or 0) >= MIN_GROUP_BLOCK:
                return groups // merge, block(merge)
    return (groups, block(1)) if block(1) is not None else None


def _merged_groups(weights: np.ndarray, groups: int, merged: int) -> np.ndarray:
    """Grouped convolution weights (CO, CI/groups, KH, KW) for ``merged`` groups of
    ``groups / merged`` neighbours each, zero between the neighbours."""
    if merged == groups:
        return weights
    co, width = weights.shape[:2]
    merge = groups // merged
    out = np.zeros((co, width * merge) + weights.shape[2:], weights.dtype)
    for c in range(co):
        slot = (c // (co // groups)) % merge  # this channel's group among its merged neighbours
        out[c, slot * width:(slot + 1) * width] = weights[c]
    return out


def _finite_on_finite(node, constants) -> bool:
    """Whether ``node`` keeps finite inputs finite (:data:`FINITE_OPS`, or a division by a
    constant that has no zero and one value for all channels, so no padding lane divides by 0)."""
    if node.op in FINITE_OPS:
        return True
    if node.op != "div" or node.inputs[1] not in constants:
        return False
    divisor = constants[node.inputs[1]]
    per_channel = divisor.ndim >= 3 and divisor.shape[-3] != 1
    return not per_channel and bool(np.all(divisor != 0))


def _is_global_mean(node) -> bool:
    """A mean over both spatial axes of an (N, C, H, W) value, kept 4-D: a global average pool."""
    if node.op != "mean" or not node.attrs["keepdims"] or node.inputs[0].type.rank != 4:
        return False
    return sorted(a % 4 for a in (node.attrs["axes"] or ())) == [2, 3]


def common_block(values) -> int | None:
    """The largest of :data:`BLOCKS` dividing the channels of every value."""
    return next((b for b in BLOCKS if all(v.shape[1] % b == 0 for v in values)), None)


def _blocked_constant(array: np.ndarray, block: int) -> np.ndarray:
    """A constant that numpy-broadcasts against (N, C, H, W), re-laid to broadcast
    the same way against (N, C/b, H, W, b)."""
    a = array.reshape((1,) * (4 - array.ndim) + array.shape)
    if a.shape[1] == 1:
        return a.reshape(a.shape + (1,))
    return block_array(a, block)


def _is_pointwise(node, constants) -> bool:
    """Whether ``node`` computes each output element from its non-constant
    inputs at that same position (and constants broadcast numpy's way), without
    using the position otherwise: then any layout of the inputs gives the same
    layout of the output."""
    opdef = get_op(node.op)
    holders = [Placeholder(v.name, v.shape, v.dtype) for v in node.inputs]
    per_channel = node.output.shape[:2] + (1, 1)  # a gate of one value per channel (squeeze-and-excitation)
    if any(v.shape not in (node.output.shape, per_channel) for v in node.inputs if v not in constants):
        return False
    if any(v in constants and v.type.rank > 4 for v in node.inputs):
        return False
    try:
        stages = opdef.build_compute(holders, node.attrs)
    except Exception:  # an op whose compute cannot be built here is simply not moved
        return False
    if len(stages) != 1 or stages[0].reduce is not None:
        return False
    st = stages[0]
    uses = sum(1 for n in ex.walk(st.body) if isinstance(n, ex.Var))
    in_loads = 0
    for load in (n for n in ex.walk(st.body) if isinstance(n, ex.Load)):
        k = next((i for i, h in enumerate(holders) if load.tensor is h), None)
        if k is None or not _trailing_broadcast(load.indices, st.axes):
            return False
        moving = node.inputs[k] not in constants
        if moving and node.inputs[k].shape == node.output.shape and not all(
                i is a for i, a in zip(load.indices, st.axes)):
            return False
        in_loads += sum(1 for i in load.indices for n in ex.walk(i) if isinstance(n, ex.Var))
    return uses == in_loads  # no axis is used outside a load's index


def _trailing_broadcast(indices, axes) -> bool:
    """Each index reads the output axis numpy's broadcasting aligns it with (the
    trailing ones), or 0 for a broadcast size-1 axis."""
    tail = axes[len(axes) - len(indices):]
    return len(indices) <= len(axes) and all(
        i is a or (isinstance(i, ex.Const) and i.value == 0) for i, a in zip(indices, tail))

