"""The loop-IR verifier rejects each kind of malformed kernel by name."""

import pytest

from minicomp.errors import VerifyError
from minicomp.ir import dtypes
from minicomp.ir import expr as ex
from minicomp.ir.loop_verify import verify_kernel
from minicomp.ir.loops import Allocate, Barrier, Buffer, For, Kernel, Seq, Store
from minicomp.target import Target


def copy_kernel(body_fn, n=8):
    x, y = Buffer("x", (n,), dtypes.float32), Buffer("y", (n,), dtypes.float32)
    i = ex.Var("i0")
    return Kernel("copy", [x], [y], body_fn(x, y, i))


def plain(x, y, i, n=8, kind="serial"):
    return For(i, n, Store(y, (i,), ex.Load(x, (i,))), kind)


def test_a_well_formed_kernel_passes():
    verify_kernel(copy_kernel(plain))
    verify_kernel(copy_kernel(lambda x, y, i: plain(x, y, i, kind="parallel")))


@pytest.mark.parametrize("build, message", [
    (lambda x, y, i: For(i, 9, Store(y, (i,), ex.Load(x, (i,)))), r"index 0 runs over 0..8, outside 0..7"),
    (lambda x, y, i: Store(y, (i,), ex.Load(x, (i,))), "index variable i0 is used outside its loop"),
    (lambda x, y, i: For(i, 8, Store(Buffer("z", (8,), dtypes.float32), (i,), ex.Load(x, (i,)))),
     "buffer z is used where it is not a parameter or allocation"),
    (lambda x, y, i: Seq([plain(x, y, i), plain(x, y, i)]), "two loops are named i0"),
    (lambda x, y, i: plain(x, y, i, kind="thread.x"), "bound to thread.x, which needs a GPU target"),
    (lambda x, y, i: For(ex.Var("o"), 1, plain(x, y, i, kind="parallel")), "parallel loop i0 is not at the top"),
    (lambda x, y, i: Seq([Barrier(), plain(x, y, i)]), "barrier outside every loop bound to a thread axis"),
    (lambda x, y, i: For(i, 8, Store(y, (i, i), ex.Load(x, (i,)))), "has 1 dimensions, indexed with 2"),
])
def test_malformed_kernels_are_rejected(build, message):
    with pytest.raises(VerifyError, match=message) as info:
        verify_kernel(copy_kernel(build))
    assert "kernel copy" in str(info.value)


def test_gpu_kernels_bind_threads_and_synchronise_inside_them():
    def gpu(x, y, i):
        tile = Buffer("t", (8,), dtypes.float32, "shared")
        body = Allocate(tile, Seq([Store(tile, (i,), ex.Load(x, (i,))), Barrier(),
                                   Store(y, (i,), ex.Load(tile, (7 - i,)))]))
        return For(i, 8, body, "thread.x")

    verify_kernel(copy_kernel(gpu), Target.cuda())
    with pytest.raises(VerifyError, match="parallel: a GPU kernel binds loops"):
        verify_kernel(copy_kernel(lambda x, y, i: plain(x, y, i, kind="parallel")), Target.cuda())
