"""The arena planner: no two live buffers share bytes; the figures are consistent."""

from hypothesis import given
from hypothesis import strategies as st

from minicomp.passes.memory import Lifetime, check_plan, plan_arena


@st.composite
def lifetimes(draw):
    out = []
    for k in range(draw(st.integers(0, 25))):
        start = draw(st.integers(0, 15))
        out.append(Lifetime(k, f"b{k}", draw(st.integers(0, 5000)), start, start + draw(st.integers(0, 6))))
    return out


@given(lifetimes())
def test_plans_never_overlap_live_buffers(lts):
    plan = plan_arena(lts)
    check_plan(plan)
    assert plan.lower_bound_bytes <= plan.arena_bytes <= plan.naive_bytes or not lts
    assert all(off % 64 == 0 for off in plan.offsets.values())


def test_buffers_with_disjoint_lifetimes_share_memory():
    plan = plan_arena([Lifetime("a", "a", 1000, 0, 1), Lifetime("b", "b", 1000, 2, 3),
                       Lifetime("c", "c", 500, 1, 2)])
    assert plan.offsets["a"] == plan.offsets["b"]
    assert plan.arena_bytes == plan.lower_bound_bytes == 1024 + 512
    assert "naive 2,560 B" in plan.summary()
