"""The onnx package's node conformance cases, run through minicomp.

``onnx.backend.test.case.node.collect_testcases()`` generates a model, its
inputs, expected outputs and tolerances for every operator case (the suite
ONNX Runtime and TVM report against). Each case is imported with its
inputs' shapes; when the import needs the value of an input (a target shape,
axes, a count, scales), the integer inputs are bound as constants and it is
tried again, then every input but the first, then every integer or bool input
(a window size or a Compress condition), then every input (Range's start,
limit and delta). It is compiled for llvm, run, and compared at the case's
rtol/atol.

Outcomes: ``pass``; ``excluded`` (a category minicomp does not compile, with
its reason); ``error`` (a clean MinicompError: a missing op or dtype);
``wrong`` (an answer that differs: a bug); ``raw`` (any other exception: a
bug). Run ``python -m minicomp.frontends.onnx_conformance`` for the table
by op.
"""

from __future__ import annotations

import collections
import warnings
from dataclasses import dataclass

import ml_dtypes
import numpy as np

from minicomp.compiler import compile as compile_graph
from minicomp.errors import MinicompError
from minicomp.frontends.onnx import from_onnx

CONTROL_FLOW = "control flow (If, Loop, Scan): minicomp compiles static graphs"
SEQUENCES = "sequence or optional types: minicomp compiles tensors only"
STRINGS = "strings: minicomp compiles numeric tensors only"
TRAINING = "training operators: minicomp compiles inference graphs"
RANDOM = "random generators: their outputs cannot be compared"
LOW_BITS = "2, 4 and 8-bit number formats"
OTHER_DOMAIN = "operators outside the default ONNX domain"

EXCLUDED_OPS = {
    **dict.fromkeys(("If", "Loop", "Scan"), CONTROL_FLOW),
    **dict.fromkeys(("SequenceAt", "SequenceConstruct", "SequenceEmpty", "SequenceErase", "SequenceInsert",
                     "SequenceLength", "SequenceMap", "SplitToSequence", "ConcatFromSequence", "Optional",
                     "OptionalGetElement", "OptionalHasElement"), SEQUENCES),
    **dict.fromkeys(("RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Bernoulli",
                     "Multinomial"), RANDOM),
    **dict.fromkeys(("StringNormalizer", "StringConcat", "StringSplit", "RegexFullMatch", "TfIdfVectorizer"),
                    STRINGS),
    **dict.fromkeys(("Gradient", "Adagrad", "Adam", "Momentum"), TRAINING),
}


def _low_bit_types():
    from onnx import TensorProto

    names = ("FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ", "FLOAT8E8M0", "INT4", "UINT4",
             "FLOAT4E2M1", "INT2", "UINT2")
    return {getattr(TensorProto, n) for n in names if hasattr(TensorProto, n)}


@dataclass
class CaseResult:
    name: str
    op: str
    outcome: str  # pass, excluded, error, wrong, raw
    detail: str = ""


def exclusion(case) -> str | None:
    """The reason a case is excluded, or None."""
    from onnx import TensorProto

    graph = case.model.graph
    for node in graph.node:
        if node.domain not in ("", "ai.onnx"):
            return OTHER_DOMAIN
        if node.op_type in EXCLUDED_OPS:
            return EXCLUDED_OPS[node.op_type]
    low = _low_bit_types()
    for vi in list(graph.input) + list(graph.output):
        t = vi.type
        if t.HasField("sequence_type") or t.HasField("optional_type"):
            return SEQUENCES
        if t.tensor_type.elem_type == TensorProto.STRING:
            return STRINGS
        if t.tensor_type.elem_type in low:
            return LOW_BITS
    if "training" in case.name and any(n.op_type == "Dropout" for n in graph.node):
        return TRAINING
    return None


def _array(x):
    from onnx import numpy_helper

    return numpy_helper.to_array(x) if hasattr(x, "dims") and hasattr(x, "data_type") else np.asarray(x)


def _import(model, feeds: dict, first: str):
    """Import with the inputs' shapes; when that needs an input's value, bind
    the integer inputs but the first as constants, then (scales, say) every input
    but the first, then every integer or bool input, then every input."""
    try:
        return from_onnx(model, shapes={n: a.shape for n, a in feeds.items()}), {}
    except MinicompError as exc:
        error = exc
    for pick in (lambda n, a: a.dtype.kind in "iu" and n != first, lambda n, a: n != first,
                 lambda n, a: a.dtype.kind in "iub", lambda n, a: True):
        bound = {n: a for n, a in feeds.items() if pick(n, a)}
        if not bound:
            continue
        shapes = {n: a.shape for n, a in feeds.items() if n not in bound}
        try:
            return from_onnx(model, shapes=shapes, constants=bound), bound
        except MinicompError as exc:
            error = exc
    raise error


def run_case(case) -> CaseResult:
    """Import, compile and run one case; compare every data set."""
    ops = [n.op_type for n in case.model.graph.node if n.op_type != "Constant"] or ["Constant"]
    op = ops[0] if case.model.graph.node else "?"  # expanded cases start with Constant nodes
    reason = exclusion(case)
    if reason:
        return CaseResult(case.name, op, "excluded", reason)
    names = [i.name for i in case.model.graph.input]
    try:
        for inputs, outputs in case.data_sets:
            feeds = dict(zip(names, (_array(a) for a in inputs)))
            graph, bound = _import(case.model, feeds, names[0] if names else "")
            got = compile_graph(graph, num_threads=1)(**{n: a for n, a in feeds.items() if n not in bound})
            for k, (a, b) in enumerate(zip(got, (_array(o) for o in outputs))):
                if a.shape != b.shape:
                    return CaseResult(case.name, op, "wrong", f"output {k}: shape {a.shape} != {b.shape}")
                floating = b.dtype.kind in "fc" or b.dtype == ml_dtypes.bfloat16
                same = _close(a, b, case.rtol, case.atol) if floating else np.array_equal(a, b)
                if not same:
                    return CaseResult(case.name, op, "wrong", f"output {k} differs")
    except MinicompError as exc:
        return CaseResult(case.name, op, "error", str(exc).split("\n")[0][:200])
    except Exception as exc:  # noqa: BLE001  (any other exception is a bug to report)
        return CaseResult(case.name, op, "raw", f"{type(exc).__name__}: {exc}"[:200])
    return CaseResult(case.name, op, "pass")


def _close(got: np.ndarray, want: np.ndarray, rtol: float, atol: float) -> bool:
    """Within the case's tolerance; float16 results also within one unit in the
    last place of the expected value, bfloat16 within two (the reference rounds
    every intermediate step to 16 bits, minicomp accumulates in float32; with
    bfloat16's 8 significant bits a chain of roundings such as a softmax moves
    the last two)."""
    if want.dtype not in (np.float16, ml_dtypes.bfloat16):
        return np.allclose(got, want, rtol=rtol, atol=atol, equal_nan=True)
    # bfloat16 keeps 7 fraction bits: float32's unit in the last place, 2**16 times
    ulp = np.spacing(np.abs(want)) if want.dtype == np.float16 else \
        np.spacing(np.abs(want.astype(np.float32))) * 2.0**17
    got, want = got.astype(np.float64), want.astype(np.float64)
    ok = np.abs(got - want) <= np.maximum(atol, ulp.astype(np.float64)) + rtol * np.abs(want)
    return bool(np.all(ok | (np.isnan(got) & np.isnan(want)) | (got == want)))


def node_cases():
    """The onnx package's node cases (model, data sets, tolerances)."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the generators overflow casts on purpose
        return [c for c in collect_testcases() if c.kind == "node"]


def run_all(op_names=(), case_patterns=(), progress=None, jobs: int = 1) -> list[CaseResult]:
    """Run the node cases, only those of ``op_names`` (an ONNX op type, e.g. ``Conv``) or whose name
    contains one of ``case_patterns`` when given; ``progress(done, total, case)`` after each (after
    each batch with ``jobs``). ``jobs`` > 1 runs them in that many worker processes: a case spends
    half its time waiting for the LLVM helper process to compile it, so two workers on two cores
    take about half the time. The results are the same, in the same order."""
    cases = [c for c in node_cases() if _selected(c, op_names, case_patterns)]
    if jobs <= 1 or len(cases) < 2:
        return _run_cases(cases, progress)
    import concurrent.futures
    import multiprocessing

    batches = [cases[i:i + _BATCH] for i in range(0, len(cases), _BATCH)]
    results = []
    # (spawn: a fresh interpreter per worker, not a fork of this one's threads and LLVM state)
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        for batch in pool.map(_run_cases, batches):
            results += batch
            if progress is not None:
                progress(len(results), len(cases), results[-1].name)
    return results


_BATCH = 16  # cases per task handed to a worker process


def _run_cases(cases, progress=None) -> list[CaseResult]:
    results = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, case in enumerate(cases):
            results.append(run_case(case))
            if progress is not None:
                progress(i + 1, len(cases), case.name)
    return results


def _selected(case, op_names, case_patterns) -> bool:
    if not op_names and not case_patterns:
        return True
    ops = {n.op_type.lower() for n in case.model.graph.node}
    return any(o.lower() in ops for o in op_names) or any(p in case.name for p in case_patterns)


def summary(results: list[CaseResult]) -> str:
    """One line of totals, then the ops with the most failing cases."""
    counts = collections.Counter(r.outcome for r in results)
    run = len(results) - counts["excluded"]
    lines = [f"onnx node cases: {len(results)}; excluded {counts['excluded']}; of the {run} run: passed "
             f"{counts['pass']} ({counts['pass'] / max(run, 1):.1%}), failing {run - counts['pass']} "
             f"(error {counts['error']}, wrong {counts['wrong']}, raw {counts['raw']})"]
    by_op = collections.defaultdict(collections.Counter)
    for r in results:
        by_op[r.op][r.outcome] += 1
    failing = sorted(((sum(c.values()) - c["pass"] - c["excluded"], op) for op, c in by_op.items()), reverse=True)
    lines += [f"  {op:<28} {n:4d} failing of {sum(by_op[op].values()) - by_op[op]['excluded']}"
              for n, op in failing if n][:40]
    return "\n".join(lines)


def main(argv=None) -> int:
    """``python -m minicomp.frontends.onnx_conformance``: run the cases, print the table by op."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m minicomp.frontends.onnx_conformance",
        description="Run the onnx package's node conformance cases (about 1,900; all of them take several minutes) "
                    "through minicomp and print the outcomes by op.")
    parser.add_argument("--op", action="append", default=[], metavar="OP",
                        help="only cases with this ONNX op type, e.g. Conv (repeatable)")
    parser.add_argument("--case", action="append", default=[], metavar="TEXT",
                        help="only cases whose name contains TEXT, e.g. test_softmax (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the cases that would run, then stop")
    parser.add_argument("--failures", action="store_true", help="also list every failing case and why")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="run the cases in N worker processes (default 1; 2 halves the time on 2 cores)")
    args = parser.parse_args(argv)
    if args.list:
        for case in node_cases():
            if _selected(case, args.op, args.case):
                print(case.name)
        return 0

    def show(done, total, name):
        if sys.stderr.isatty():
            sys.stderr.write(f"\r\033[K{done}/{total} {name}")
            sys.stderr.flush()
        elif done == total or done % 100 == 0:
            print(f"{done}/{total} cases run", file=sys.stderr)

    results = run_all(args.op, args.case, progress=show, jobs=args.jobs)
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K")
    if not results:
        print("no case matches --op/--case", file=sys.stderr)
        return 2
    print(summary(results))
    if args.failures:
        for r in results:
            if r.outcome not in ("pass", "excluded"):
                print(f"  {r.outcome:<6} {r.name}: {r.detail}")
    return int(any(r.outcome in ("wrong", "raw") for r in results))


if __name__ == "__main__":
    raise SystemExit(main())
