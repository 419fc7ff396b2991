"""Fusion of reduction chains: softmax and the product that follows it run as one pass over the
reduced axis (passes/lower_chain.py), with no S x S buffer, and match the reference."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minicomp as mc

H, D = 2, 16


def attention(S, scale=0.25, mask=None, causal=False, kv_heads=H, seq=None):
    """softmax(q k^T * scale [+ mask]) v with ``H`` heads (``kv_heads`` of them for K and V, repeated:
    grouped-query attention); ``mask``: "additive" (an input added to the scores) or "boolean" (an
    input choosing the score or -inf)."""
    n = seq or S
    g = mc.GraphBuilder("attention")
    q = g.input("q", (1, H, n, D))
    k = g.input("k", (1, kv_heads, n, D))
    v = g.input("v", (1, kv_heads, n, D))
    if kv_heads != H:
        rep = H // kv_heads
        k = g.broadcast_to(k.reshape(1, kv_heads, 1, n, D), shape=(1, kv_heads, rep, n, D)).reshape(1, H, n, D)
        v = g.broadcast_to(v.reshape(1, kv_heads, 1, n, D), shape=(1, kv_heads, rep, n, D)).reshape(1, H, n, D)
    s = (q @ g.transpose(k, perm=(0, 1, 3, 2))) * g.constant(np.float32(scale))
    if mask == "additive":
        s = s + g.input("bias", (1, 1, n, n))
    if mask == "boolean":
        s = g.where(g.input("keep", (1, 1, n, n), "bool"), s, g.constant(np.float32(-np.inf)))
    if causal:
        tri = np.triu(np.full((S, S), -np.inf, np.float32), 1)
        s = s + g.constant(tri)
    g.output(g.softmax(s, axis=-1) @ v)
    return g.build()


def inputs(graph, seed=0, S=None):
    rng = np.random.default_rng(seed)
    out = []
    for v in graph.inputs:
        shape = tuple(S if not isinstance(d, int) else d for d in v.shape)
        if v.dtype.name == "bool":
            keep = rng.random(shape) < 0.7
            keep[..., 0] = True  # every row keeps one key (fully masked rows: see their own test)
            out.append(keep)
        else:
            out.append(rng.standard_normal(shape).astype(np.float32))
    return out


def chain_kernels(model):
    return [k for k in model.kernels if k.prescheduled]


def check(graph, args, model=None, atol=2e-5):
    model = model or mc.compile(graph, cache=False)
    got = model(*args)[0]
    want = mc.run_reference(graph, *args)[0]
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=atol)
    return model


@pytest.mark.parametrize("S", [1, 5, 31, 32, 33, 97, 300])
def test_attention_runs_as_one_pass_and_keeps_no_score_matrix(S):
    graph = attention(S)
    model = check(graph, inputs(graph))
    (kernel,) = chain_kernels(model)
    assert "a chain of reductions over one axis, in one pass" in model.fusion.explain()
    # No buffer holds a row block's scores for all S keys: at most a step's.
    from minicomp.ir.loops import Allocate, walk_stmts

    sizes = [s.buffer.size for s in walk_stmts(kernel.body) if isinstance(s, Allocate)]
    assert all(n < S * S or S < 64 for n in sizes)
    assert not kernel.workspace


@pytest.mark.parametrize("mask", ["additive", "boolean"])
@pytest.mark.parametrize("causal", [False, True])
def test_masked_and_causal_attention_match_the_reference(mask, causal):
    graph = attention(45, mask=mask, causal=causal)
    model = check(graph, inputs(graph, 1))
    assert chain_kernels(model)


def test_grouped_query_attention_shares_kv_heads():
    graph = attention(40, kv_heads=1)
    model = check(graph, inputs(graph, 2))
    assert chain_kernels(model)


def test_fully_masked_rows_give_what_the_reference_gives_and_large_logits_do_not_overflow():
    graph = attention(20, mask="boolean", scale=1e3)
    args = inputs(graph, 3)
    args[3][..., 4, :] = False  # row 4 keeps no key: 0 / 0 in the definition too
    model = mc.compile(graph, cache=False)
    got, want = model(*args)[0], mc.run_reference(graph, *args)[0]
    assert np.isnan(want[..., 4, :]).all() and np.isnan(got[..., 4, :]).all()
    keep = np.ones(got.shape[2], bool)
    keep[4] = False
    assert np.isfinite(got[..., keep, :]).all()
    np.testing.assert_allclose(got[..., keep, :], want[..., keep, :], rtol=2e-5, atol=2e-5)


def test_a_gate_softmax_times_values_is_a_chain_too():
    """A mixture-of-experts gate: softmax over experts, then a product with the experts' outputs."""
    g = mc.GraphBuilder("gate")
    logits, values = g.input("logits", (37, 8)), g.input("values", (8, 24))
    g.output(g.softmax(logits, axis=-1) @ values)
    graph = g.build()
    model = check(graph, inputs(graph, 4))
    assert chain_kernels(model)


def test_log_sum_exp_then_a_weighted_sum_is_a_chain():
    g = mc.GraphBuilder("lse")
    x, v = g.input("x", (19, 50)), g.input("v", (50, 16))
    m = g.max(x, axes=(1,), keepdims=True)
    lse = m + g.log(g.sum(g.exp(x - m), axes=(1,), keepdims=True))
    g.output(g.exp(x - lse) @ v)
    graph = g.build()
    model = check(graph, inputs(graph, 5))
    assert chain_kernels(model)
    assert "after-pass" in model.fusion.explain()


def test_a_chain_that_does_not_factor_is_refused_with_the_reason():
    g = mc.GraphBuilder("refused")
    x, v = g.input("x", (9, 30)), g.input("v", (30, 8))
    g.output(g.log(g.softmax(x, axis=-1)) @ v)  # log of a term of the running max: no rule splits it
    graph = g.build()
    model = check(graph, inputs(graph, 6))
    assert not chain_kernels(model)
    assert "not fused as a reduction chain" in model.fusion.explain()


def test_the_loops_name_the_rules_of_the_derivation():
    model = mc.compile(attention(64), cache=False)
    loops = model.stages["loops"]
    assert "reduction chain over" in loops and "rules: exp-split" in loops and "online-rescale" in loops
    assert "exp((softmax_max.old - softmax_max))" in loops


def test_chains_can_be_turned_off():
    graph = attention(33)
    off = mc.compile(graph, cache=False, fusion={"reduction_chains": False})
    assert not chain_kernels(off)
    check(graph, inputs(graph, 7), off)


@pytest.mark.parametrize("S", [45, 130])
@pytest.mark.parametrize("case", ["plain", "additive", "boolean", "causal", "gqa"])
def test_a_gpu_target_runs_the_chain_one_row_a_thread(case, S):
    """On CUDA (run here by cuda-emu) the same one pass, a thread a row, no S x S buffer; from 64 rows
    a block of 64 threads copies each step's keys to shared memory together (130: a partial block)."""
    graph = attention(S, mask=case if case in ("additive", "boolean") else None, causal=case == "causal",
                      kv_heads=1 if case == "gqa" else H)
    model = check(graph, inputs(graph, 3), mc.compile(graph, target="cuda-emu", cache=False))
    (kernel,) = chain_kernels(model)
    assert "row a thread" in kernel.notes[0] and model.memory_plan.arena_bytes < S * S * 4
    cuda = model.stages["cuda"]
    assert "threadIdx.x" in cuda and ("__shared__" in cuda and "__syncthreads();" in cuda) == (S >= 64)
    with pytest.raises(mc.MinicompError, match="a GPU target takes one row a thread"):
        mc.compile(graph, target="cuda-emu", cache=False, fusion={"chain_tiles": (4, 64)})


def test_a_gpu_target_serves_a_range_of_lengths_and_splits_decoding():
    graph = attention(None, seq=mc.Dim("seq", 1, 90))
    model = mc.compile(graph, target="cuda-emu", cache=False)
    assert chain_kernels(model)
    for S in (1, 33, 90):
        g_static = attention(S)
        args = inputs(g_static, S)
        np.testing.assert_allclose(model(*args)[0], mc.run_reference(g_static, *args)[0], rtol=2e-5, atol=2e-5)
    S = 2048  # one query row of one head: the keys split over threads, a second launch merges them
    g = mc.GraphBuilder("decode")
    q, k, v = g.input("q", (1, 1, 1, D)), g.input("k", (1, 1, S, D)), g.input("v", (1, 1, S, D))
    g.output(g.softmax((q @ g.transpose(k, perm=(0, 1, 3, 2))) * g.constant(np.float32(0.25)), axis=-1) @ v)
    graph = g.build()
    model = check(graph, inputs(graph, 4), mc.compile(graph, target="cuda-emu", cache=False))
    (kernel,) = model.kernels
    assert "flash-decoding" in kernel.notes[0] and model.stages["cuda"].count("__global__ void") == 2


def test_one_compile_serves_every_sequence_length_in_a_range():
    graph = attention(None, seq=mc.Dim("seq", 1, 300))
    model = mc.compile(graph, cache=False)
    assert chain_kernels(model)
    for S in (1, 17, 64, 255, 300):
        g_static = attention(S)
        args = inputs(g_static, S)
        np.testing.assert_allclose(model(*args)[0], mc.run_reference(g_static, *args)[0], rtol=2e-5, atol=2e-5)


def test_keys_read_through_a_reshape_of_symbolic_length_are_copied_a_step_at_a_time():
    """K as a projection's output, (1, seq, H * D) split into heads: its indices name the length, which
    is fixed for a call, so the chain still copies each step's keys rather than read K strided per score."""
    seq = mc.Dim("seq", 1, 200)
    g = mc.GraphBuilder("heads")
    q, k, v = (g.input(n, (1, seq, H * D)).reshape(1, seq, H, D).transpose(0, 2, 1, 3) for n in "qkv")
    s = (q @ g.transpose(k, perm=(0, 1, 3, 2))) * g.constant(np.float32(0.125))
    g.output(g.softmax(s, axis=-1) @ v)
    graph = g.build()
    model = mc.compile(graph, cache=False)
    assert chain_kernels(model) and "k_step" in model.stages["loops"]
    for S in (1, 70, 200):
        args = [np.random.default_rng(S).standard_normal((1, S, H * D)).astype(np.float32) for _ in range(3)]
        np.testing.assert_allclose(model(*args)[0], mc.run_reference(graph, *args)[0], rtol=2e-5, atol=2e-5)


@settings(deadline=None, max_examples=12)
@given(S=st.integers(1, 200), heads=st.sampled_from([1, 2]), mask=st.sampled_from([None, "additive", "boolean"]),
       scale=st.sampled_from([0.125, 1.0, 30.0]), seed=st.integers(0, 2**16))
def test_random_attention_shapes_and_masks_match_the_reference(S, heads, mask, scale, seed):
    graph = attention(S, scale=scale, mask=mask, kv_heads=heads)
    check(graph, inputs(graph, seed), atol=5e-5)


@settings(deadline=None, max_examples=6)
@given(S=st.integers(1, 200), heads=st.sampled_from([1, 2]), mask=st.sampled_from([None, "additive", "boolean"]),
       causal=st.booleans(), seed=st.integers(0, 2**16))
def test_random_attention_on_a_gpu_target_matches_the_reference(S, heads, mask, causal, seed):
    graph = attention(S, mask=mask, causal=causal, kv_heads=heads)
    model = check(graph, inputs(graph, seed), mc.compile(graph, target="cuda-emu", cache=False), atol=5e-5)
    assert chain_kernels(model)


def test_a_mask_shared_by_two_layers_stays_its_own_kernel_and_both_layers_fuse():
    """A padding mask made once and added to the scores of two layers: the group that makes it also
    gives it to the other layer, so it is split off and both chains read it."""
    S = 24
    g = mc.GraphBuilder("two_layers")
    keep = g.input("keep", (1, 1, 1, S), "bool")
    bias = g.where(keep, g.constant(np.float32(0.0)), g.constant(np.float32(-np.inf)))
    x = g.input("x", (1, H, S, D))
    for _ in range(2):
        s = (x @ g.transpose(x, perm=(0, 1, 3, 2))) * g.constant(np.float32(0.25)) + bias
        x = g.softmax(s, axis=-1) @ x
    g.output(x)
    graph = g.build()
    model = check(graph, inputs(graph, 8))
    assert len(chain_kernels(model)) == 2, model.fusion.explain()


def test_a_reshape_between_the_softmax_and_a_batched_product_still_fuses():
    """Eager attention in transformers: probabilities viewed as (batch * heads, S, S) for bmm."""
    S = 30
    g = mc.GraphBuilder("bmm")
    q, k, v = (g.input(n, (H, S, D)) for n in "qkv")
    s = (q @ g.transpose(k, perm=(0, 2, 1))).reshape(1, H, S, S)
    p = g.softmax(s, axis=-1).reshape(H, S, S)
    g.output(p @ v)
    graph = g.build()
    model = check(graph, inputs(graph, 9))
    assert chain_kernels(model), model.fusion.explain()


def test_a_norm_before_a_product_is_a_chain_but_stays_stage_by_stage():
    """RMSNorm then a projection derives (1 / rms is applied after the pass), but with no running max
    nothing needed the terms kept: the product's own register tiles do it better."""
    g = mc.GraphBuilder("rmsnorm")
    x, w = g.input("x", (10, 64)), g.input("w", (64, 48))
    ms = g.sum(x * x, axes=(1,), keepdims=True) * g.constant(np.float32(1 / 64))
    g.output((x * (ms + g.constant(np.float32(1e-6))) ** g.constant(np.float32(-0.5))) @ w)
    graph = g.build()
    model = check(graph, inputs(graph, 10))
    assert not chain_kernels(model)
    assert "a reduction chain, kept stage by stage: no running max is rescaled" in model.fusion.explain()


@pytest.mark.parametrize("rows", [1, 3])
def test_decoding_reads_keys_as_they_are(rows):
    """A few query rows over many keys (decoding): no copy of K^T in front of the chain; each score is
    a dot product along K's rows."""
    S = 77
    g = mc.GraphBuilder("decode")
    q = g.input("q", (1, H, rows, D))
    k, v = g.input("k", (1, 1, S, D)), g.input("v", (1, 1, S, D))
    k4 = g.broadcast_to(k, shape=(1, H, S, D))  # grouped-query: one K/V head for all
    s = (q @ g.transpose(k4, perm=(0, 1, 3, 2))) * g.constant(np.float32(0.25))
    g.output(g.softmax(s, axis=-1) @ g.broadcast_to(v, shape=(1, H, S, D)))
    graph = g.build()
    model = check(graph, inputs(graph, 11))
    (kernel,) = model.kernels
    assert kernel.prescheduled and any("transpose" in n for n in kernel.group)
    assert "_part" in model.stages["loops"]  # the dot products' partial sums


@pytest.mark.parametrize("tiles", [None, (8, 64, 3)])
def test_many_rows_copy_each_step_of_keys_not_all_of_k_transposed(tiles):
    """Prefill: the chain reads K as it is and copies each step's keys once for a job of row tiles, so
    the arena holds no S x D copy of K^T; jobs whose tiles do not divide the rows (300 rows: 38 tiles
    of 8) end with a partial tile and a partial job."""
    graph = attention(300, mask="additive")
    model = mc.compile(graph, cache=False, fusion={"chain_tiles": tiles} if tiles else None)
    check(graph, inputs(graph, 12), model)
    (kernel,) = model.kernels
    assert kernel.prescheduled and any("transpose" in n for n in kernel.group)
    assert "k_step" in model.stages["loops"]
    assert model.memory_plan.arena_bytes == 0


def test_chain_tiles_out_of_range_are_refused():
    graph = attention(64)
    for tiles in [(8, 48), (0, 64), (8, 64, 0), (8, 64, 2, 1)]:
        with pytest.raises(mc.MinicompError, match="chain_tiles"):
            mc.compile(graph, cache=False, fusion={"chain_tiles": tiles})


@pytest.mark.parametrize("rows", [1, 3])
def test_one_head_decoding_splits_the_keys_and_merges_the_parts(rows):
    """Flash-decoding: one head leaves threads idle, so the keys split into parts, each part's (max,
    sum, acc) is kept, and a second step merges them by the derived rescale. Whole parts masked away
    (row 0 keeps only its last 700 keys, in two parts) and a row masked entirely (row 2: NaN, as the reference) too."""
    S = 2048
    g = mc.GraphBuilder("decode")
    q, k, v = g.input("q", (1, 1, rows, D)), g.input("k", (1, 1, S, D)), g.input("v", (1, 1, S, D))
    s = (q @ g.transpose(k, perm=(0, 1, 3, 2))) * g.constant(np.float32(0.25))
    s = g.where(g.input("keep", (1, 1, rows, S), "bool"), s, g.constant(np.float32(-np.inf)))
    g.output(g.softmax(s, axis=-1) @ v)
    graph = g.build()
    rng = np.random.default_rng(rows)
    keep = np.ones((1, 1, rows, S), bool)
    keep[0, 0, 0, :S - 700] = False
    if rows == 3:
        keep[0, 0, 2] = False
    args = [rng.standard_normal((1, 1, rows, D)).astype(np.float32) * 4,
            *(rng.standard_normal((1, 1, S, D)).astype(np.float32) for _ in range(2)), keep]
    model = mc.compile(graph, cache=False)
    (kernel,) = model.kernels
    assert "flash-decoding" in kernel.notes[0] and kernel.workspace
    got, want = model(*args)[0], mc.run_reference(graph, *args)[0]
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
    assert np.isnan(got[0, 0, -1]).all() == (rows == 3) and not np.isnan(got[0, 0, 0]).any()


@pytest.mark.slow
@pytest.mark.parametrize("S", [4099, 4100])
def test_long_sequences_prime_or_not_match_the_reference(S):
    """Thousands of keys: many full steps, the halves of a step, and a masked last step (4099 is prime)."""
    graph = attention(S, mask="additive")
    model = check(graph, inputs(graph, S), atol=5e-5)
    assert chain_kernels(model)


def test_the_c_target_runs_the_chain_too():
    graph = attention(40, mask="boolean")
    model = check(graph, inputs(graph, 12), mc.compile(graph, target="c", cache=False))
    assert chain_kernels(model)


def test_rows_chosen_away_whole_are_zeros_as_in_the_definition():
    """ONNX's expanded Attention zeroes a row whose every key is masked with where(row_masked, 0, p):
    the choice is made once a row, so it chooses the after-pass 1 / l too, which is 1 / 0 there."""
    S = 12
    g = mc.GraphBuilder("row_masked")
    q, k, v = (g.input(n, (1, H, S, D)) for n in "qkv")
    keep = g.input("keep", (S, S), "bool")
    row_masked = g.input("row_masked", (S, 1), "bool")
    s = g.where(keep, q @ g.transpose(k, perm=(0, 1, 3, 2)), g.constant(np.float32(-np.inf)))
    p = g.where(row_masked, g.constant(np.float32(0.0)), g.softmax(s, axis=-1))
    g.output(p @ v)
    graph = g.build()
    rng = np.random.default_rng(13)
    args = [rng.standard_normal((1, H, S, D)).astype(np.float32) for _ in range(3)]
    keep_ = rng.random((S, S)) < 0.6
    keep_[:, 0] = True
    keep_[5] = False
    args += [keep_, ~keep_.any(axis=1, keepdims=True)]
    model = check(graph, args)
    assert chain_kernels(model)
    assert (model(*args)[0][..., 5, :] == 0).all()
