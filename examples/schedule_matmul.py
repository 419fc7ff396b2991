"""Write a matmul schedule by hand and print the loops before and after.

The steps build a register tile like the CPU schedule does: 6 rows x 16
lanes of accumulators that stay in registers through the whole reduction,
with the bias and ReLU applied as the tile is written out.

    python examples/schedule_matmul.py
"""

import numpy as np

import minicomp as mc
from minicomp.passes.manager import PassManager, Program
from minicomp.passes.schedules import apply_schedule, parse_schedule

M, K, N = 48, 64, 96

SCHEDULE = """
    tile(i0, i1, 6, 16)                       # i0.o, i1.o, i0.i, i1.i
    cache_write(relu_4, i1.o, local)          # a 6x16 accumulator tile per block
    decompose_reduction(i0.i)                 # zero the tile in its own loops
    reorder(r0, i0.i, i1.i)                   # the reduction outside the tile
    unroll(i0.i); simd(i1.i)                  # rows unrolled, columns as vector lanes
    unroll(i0.i.init); simd(i1.i.init)
    unroll(i0.i.wb); simd(i1.i.wb)
    reverse_compute_inline(i2)                # bias + relu while writing the tile
    parallel(i0.o)
"""


def build_dense() -> mc.Graph:
    g = mc.GraphBuilder("dense")
    x = g.input("x", (M, K))
    w = g.constant(np.random.default_rng(0).standard_normal((K, N)).astype(np.float32))
    b = g.constant(np.random.default_rng(1).standard_normal(N).astype(np.float32))
    g.output(g.relu(x @ w + b))
    return g.build()


def main() -> int:
    graph = build_dense()
    # The kernel as lowering leaves it: plain loops, named i0, i1, r0 ...
    kernel = PassManager("simplify,fuse,lower").run(Program(graph)).kernels[0]
    print("before:\n" + str(kernel))
    schedule = parse_schedule(SCHEDULE)
    print("\nafter:\n" + str(apply_schedule(kernel, schedule)))

    # The same steps through compile(), keyed by the kernel's name.
    model = mc.compile(graph, schedules={kernel.name: schedule})
    xs = np.random.default_rng(2).standard_normal((M, K)).astype(np.float32)
    (got,) = model(xs)
    want = mc.run_reference(graph, xs)[0]
    print(f"\n{kernel.name}: max |diff| vs reference: {np.abs(got - want).max():.2e}; "
          f"{len(schedule)} steps")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
