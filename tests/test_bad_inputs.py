"""Bad input found by trying minicomp as a new user would: each is a clean
MinicompError (the input, the error class, a message check), never a raw
traceback from inside the package or a silently wrong answer."""

import os
import signal

import numpy as np
import pytest

import minicomp as mc


def builder():
    return mc.GraphBuilder()


def unary(op, in_shape=(2, 3), **attrs):
    g = builder()
    return getattr(g, op)(g.input("x", in_shape), **attrs)


def compiled_relu(**kw):
    g = builder()
    g.output(g.relu(g.input("x", (2, 2))))
    return mc.compile(g.build(), **kw)


def int_times_float():
    g = builder()
    return g.input("x", (2,), "int32") * 2.7


def take_out_of_range():
    g = builder()
    return g.take(g.input("x", (3,)), g.constant(np.array([5], np.int64)))


def parse(body: str, params: str = "%x: f32[1]"):
    return mc.parse_graph(f"graph g({params}) {{\n{body}\n}}\n")


CASES = {
    # dimensions
    "negative dimension": (lambda: builder().input("x", (-2, 3)), mc.ShapeError, "integers >= 0"),
    "fractional dimension": (lambda: builder().input("x", (2.5, 3)), mc.ShapeError, "got 2.5"),
    "text dimension": (lambda: builder().input("x", ("a", 3)), mc.ShapeError, "got 'a'"),
    "dimension past 2**64": (lambda: builder().input("x", (2**64 + 3,)), mc.ShapeError, "address"),
    # attributes
    "fractional axis": (lambda: unary("softmax", axis=1.7), mc.ShapeError, "axis=1.7 must be an integer"),
    "boolean axis": (lambda: unary("softmax", axis=True), mc.ShapeError, "must be an integer"),
    "keepdims as text": (lambda: unary("sum", axes=[1], keepdims="no"), mc.ShapeError, "true or false"),
    "fractional perm": (lambda: unary("transpose", (2, 3, 4), perm=(0.5, 1, 2)), mc.ShapeError, "integers"),
    "fractional reshape": (lambda: unary("reshape", (8,), shape=[8.5]), mc.ShapeError, "integers"),
    "clip bound as text": (lambda: unary("clip", min="lo"), mc.ShapeError, "must be a number"),
    # semantics
    "int tensor times a float": (int_times_float, mc.MinicompError, "cast the tensor first"),
    "constant index out of range": (take_out_of_range, mc.ShapeError, "index 5 is out of range"),
    # API
    "from_onnx(None)": (lambda: mc.from_onnx(None), mc.MinicompError, "path, bytes or an onnx.ModelProto"),
    "fractional num_threads": (lambda: compiled_relu(num_threads=2.5), mc.MinicompError, "whole number"),
    "ragged input": (lambda: compiled_relu()([[1.0, 2.0], [3.0]]), mc.RuntimeInputError, "not an array"),
    "graph without outputs": (lambda: mc.compile(parse("  return")), mc.MinicompError, "no outputs"),
    # IR text
    "constant past int32": (lambda: parse("  %c: i32[1] = constant [99999999999]\n  return %c", "%x: i32[1]"),
                            mc.ParseError, "out of bounds"),
    "infinite dimension": (lambda: parse("  return %x", "%x: f32[inf]"), mc.ParseError, "whole number"),
    "deeply nested list": (lambda: parse("  %c: f32[1] = constant " + "[" * 3000 + "\n  return %x"),
                           mc.ParseError, "nested"),
    "bad base64": (lambda: parse('  %c: f32[1] = constant data<"@@@">\n  return %c'), mc.ParseError, "base64"),
    "fraction in an int constant": (lambda: parse("  %c: i32[1] = constant [1.5]\n  return %c", "%x: i32[1]"),
                                    mc.ParseError, "cannot hold the fraction"),
    # found by outside probes: raw exceptions and silent guesses
    "argmax of a 0-d tensor": (lambda: unary("argmax", ()), mc.ShapeError, "0-d tensor has no axis"),
    "concat of 0-d tensors": (lambda: _concat_0d(), mc.ShapeError, "op concat"),
    "ragged constant": (lambda: builder().constant([[1, 2], [3]]), mc.MinicompError, "not a rectangular array"),
    "text constant": (lambda: builder().constant(["a", "b"]), mc.MinicompError, "not numbers"),
    "huge arange": (lambda: builder().arange(0, 2**62), mc.MinicompError, "at most"),
    "opt_level 9": (lambda: compiled_relu(opt_level=9), mc.MinicompError, "opt_level must be 0, 1, 2 or 3"),
    "None as an input": (lambda: _add_none(), mc.MinicompError, "an op input is None"),
    "memory_budget=True": (lambda: compiled_relu(memory_budget=True), mc.MinicompError, "number of bytes"),
    "two ONNX nodes write one name": (lambda: _onnx_two_writers(), mc.MinicompError, "exactly one producer"),
}


def _concat_0d():
    g = builder()
    return g.concat(g.input("x", ()), g.input("y", ()), axis=0)


def _add_none():
    g = builder()
    return g.op("add", g.input("x", (2,)), None)


def _onnx_two_writers():
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Relu", ["x"], ["y"], name="first"), helper.make_node("Neg", ["x"], ["y"], name="second")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    return mc.from_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_a_clean_error(case):
    make, error, message = CASES[case]
    with pytest.raises(error, match=message):
        make()


def test_the_ir_doc_example_parses_with_its_location():
    graph = parse("  %r: f32[1] = relu(%x) @block1/relu   # comment\n  return %r")
    assert graph.nodes[0].name == "block1/relu"


def test_an_output_too_large_to_allocate_is_a_clean_error():
    g = builder()
    x = g.input("x", (1,))
    g.output(g.broadcast_to(x, shape=(1 << 45,)) * 2.0)  # 128 TiB of float32
    model = mc.compile(g.build())
    with pytest.raises(mc.MinicompError, match="cannot allocate output"):
        model(np.ones(1, np.float32))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_model_runs_in_a_forked_child_after_the_parent_used_threads():
    g = builder()
    a = g.input("a", (256, 256))
    g.output(g.relu(a @ a))
    model = mc.compile(g.build(), num_threads=2)
    x = np.full((256, 256), 0.5, np.float32)
    want = model(x)[0]
    pid = os.fork()
    if pid == 0:  # the child: a hang is turned into a failure by the alarm
        signal.alarm(20)
        ok = np.allclose(model(x)[0], want)
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child status {status}"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_fork_taken_while_another_thread_runs_the_model_does_not_hang_the_child():
    import threading

    g = builder()
    a = g.input("a", (384, 384))
    g.output(g.relu(a @ a @ a))
    model = mc.compile(g.build(), num_threads=2)
    x = np.full((384, 384), 0.01, np.float32)
    want = model(x)[0]
    inside, stop = threading.Event(), threading.Event()

    def busy():
        inside.set()
        while not stop.is_set():
            model(x)  # the lock is held for nearly all of a call: the fork copies it held

    worker = threading.Thread(target=busy, daemon=True)
    worker.start()
    inside.wait(10)
    while not model._lock.locked():  # fork while the other thread is inside a call
        pass
    pid = os.fork()
    if pid == 0:  # the child: a hang is turned into a failure by the alarm
        signal.alarm(20)
        ok = np.allclose(model(x)[0], want)
        os._exit(0 if ok else 1)
    stop.set()
    worker.join()
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child status {status}"


def test_float_to_int_casts_follow_one_rule_everywhere():
    """NaN gives 0, out-of-range values saturate: the reference and both code generators agree."""
    g = builder()
    x = g.input("x", (7,))
    g.output(x.astype("int32"), x.astype("int64"))
    graph = g.build()
    a = np.array([np.nan, np.inf, -np.inf, 3e9, -3e9, -2.7, 2.7], np.float32)
    want = [[0, 2**31 - 1, -2**31, 2**31 - 1, -2**31, -2, 2], [0, 2**63 - 1, -2**63, 3 * 10**9, -3 * 10**9, -2, 2]]
    for target in ("reference", "llvm", "cuda-emu"):
        assert [o.tolist() for o in mc.compile(graph, target=target)(a)] == want, target


@pytest.mark.parametrize("opset", [0, -1, 30])
def test_onnx_opsets_outside_what_is_read_are_refused(opset):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    node = helper.make_node("Relu", ["a"], ["c"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    with pytest.raises(mc.UnsupportedError, match="opset"):
        mc.from_onnx(model)
    assert onnx  # the package is the one the opset range comes from


def test_a_dynamic_shape_from_the_cli_names_the_shape_flag(tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from minicomp.cli import main

    node = helper.make_node("Relu", ["a"], ["c"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, ["N", 4])])
    path = tmp_path / "dyn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    assert main(["run", str(path)]) == 2
    assert "--shape a=" in capsys.readouterr().err
    assert main(["run", str(path), "--shape", "a=2,4"]) == 0
