"""Fusion orders its groups with its own heap-based topological sort (importing
networkx costs a compiling process 16 MB): it must agree with networkx's
lexicographical_topological_sort on random DAGs."""

import networkx as nx
from hypothesis import given
from hypothesis import strategies as st

from minicomp.passes.fusion import ordered_groups


@st.composite
def dags(draw):
    n = draw(st.integers(1, 12))
    edges = draw(st.sets(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)).filter(lambda e: e[0] < e[1])))
    keys = draw(st.permutations(range(n)))  # a vertex's key, as fusion's first-node index
    return n, edges, keys


@given(dags())
def test_the_order_is_networkx_lexicographical_order(case):
    n, edges, keys = case
    names = [f"g{i}" for i in range(n)]
    after = {v: [names[b] for a, b in edges if names[a] == v] for v in names}
    ours = ordered_groups(names, lambda v: after[v], lambda v: keys[names.index(v)])
    dag = nx.DiGraph()
    dag.add_nodes_from(names)
    dag.add_edges_from((names[a], names[b]) for a, b in edges)
    assert ours == list(nx.lexicographical_topological_sort(dag, key=lambda v: keys[names.index(v)]))
