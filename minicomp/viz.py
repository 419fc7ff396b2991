"""Draw a graph with its fused groups as coloured clusters (Graphviz DOT).

``graph_dot`` writes DOT text with our own code; ``render_graph`` turns it
into PNG or SVG with Graphviz's ``dot`` program when it is installed, and
says so clearly when it is not.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from minicomp.errors import MinicompError
from minicomp.ir.graph import Graph

PALETTE = ["#fde2e4", "#e2ece9", "#dfe7fd", "#fff1e6", "#e8e8e4", "#f0efeb", "#d7e3fc", "#eae4e9",
           "#cddafd", "#fad2e1", "#bee1e6", "#f1e4d8"]


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _node_label(n) -> str:
    return _q(f"{n.op}\n{n.outputs[0].type}")


def graph_dot(graph: Graph, groups=None) -> str:
    """DOT text: one box per node (op and output type), one cluster per group."""
    lines = [f"digraph {_q(graph.name)} {{", "  rankdir=TB;", '  node [shape=box, fontname="Helvetica"];']
    for v in graph.inputs:
        lines.append(f"  {_q('v:' + v.name)} [label={_q(f'{v.name}: {v.type}')}, shape=ellipse];")
    for k in range(len(graph.outputs)):
        lines.append(f"  {_q(f'out:{k}')} [label={_q(f'output {k}')}, shape=ellipse];")
    member = {}
    for gi, g in enumerate(groups or []):
        lines.append(f"  subgraph {_q(f'cluster_{gi}')} {{")
        lines.append(f"    label={_q(g.name)}; style=filled; color={_q(PALETTE[gi % len(PALETTE)])};")
        for n in g.nodes:
            member[n] = gi
            lines.append(f"    {_q('n:' + n.name)} [label={_node_label(n)}];")
        lines.append("  }")
    for n in graph.nodes:
        if n not in member:
            lines.append(f"  {_q('n:' + n.name)} [label={_node_label(n)}];")
    for n in graph.nodes:
        for v in n.inputs:
            if v.producer is not None:
                lines.append(f"  {_q('n:' + v.producer.name)} -> {_q('n:' + n.name)};")
            elif v in graph.constants:
                continue  # weights would clutter the picture
            else:
                lines.append(f"  {_q('v:' + v.name)} -> {_q('n:' + n.name)};")
    for k, v in enumerate(graph.outputs):
        src = f"n:{v.producer.name}" if v.producer is not None else f"v:{v.name}"
        if v.producer is not None or v in graph.inputs:
            lines.append(f"  {_q(src)} -> {_q(f'out:{k}')};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_graph(graph: Graph, path: str, groups=None) -> str:
    """Write ``path`` (.png, .svg or .dot). Returns the path written.

    Without Graphviz's ``dot`` the DOT text is written next to ``path`` and a
    MinicompError says so.
    """
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    text = graph_dot(graph, groups)
    if ext == "dot":
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path
    if ext not in ("png", "svg", "pdf"):
        raise MinicompError(f"{path}: the picture must end in .png, .svg, .pdf or .dot")
    dot = shutil.which("dot")
    if dot is None:
        fallback = os.path.splitext(path)[0] + ".dot"
        with open(fallback, "w", encoding="utf-8") as f:
            f.write(text)
        raise MinicompError(f"Graphviz's 'dot' program is not installed, so {path} was not drawn; "
                            f"the graph was written as DOT text to {fallback} "
                            f"(install Graphviz, e.g. 'apt-get install graphviz', to render it)")
    proc = subprocess.run([dot, f"-T{ext}", "-o", path], input=text, text=True, capture_output=True)
    if proc.returncode != 0:
        raise MinicompError(f"dot failed to draw {path}: {proc.stderr.strip()}")
    return path
