"""Dumps of a graph after each pass: text, DOT/SVG (nodes created by the pass highlighted), an HTML index."""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

import graphviz
import jinja2
from torch import fx

from . import meta
from .printer import graph_text, target_name, type_str

_FILL = {"created": "#ffd966", "integer": "#b6d7a8", "float": "#f4cccc", "io": "#cfe2f3"}

_INDEX = jinja2.Template(
    """<!doctype html><html><head><meta charset="utf-8"><title>qcompile dump</title>
<style>body{font-family:sans-serif;margin:2em} td,th{padding:4px 10px;text-align:left}
tr:nth-child(even){background:#f3f3f3} .legend span{padding:2px 8px;margin-right:6px}</style></head>
<body><h1>qcompile pass dumps</h1>
<p>Pipeline: <code>{{ pipeline }}</code></p>
<p class="legend">{% for k, v in fill.items() %}<span style="background:{{ v }}">{{ k }}</span>{% endfor %}</p>
<table><tr><th>#</th><th>pass</th><th>changed</th><th>nodes</th><th>time (ms)</th><th>statistics</th><th>files</th></tr>
{% for e in entries %}<tr><td>{{ e.index }}</td><td>{{ e.name }}</td><td>{{ e.changed }}</td><td>{{ e.nodes }}</td>
<td>{{ "%.1f"|format(e.ms) }}</td><td>{{ e.stats }}</td><td><a href="{{ e.stem }}.txt">text</a> <a href="{{ e.stem }}.dot">dot</a>
{% if e.svg %}<a href="{{ e.stem }}.svg">svg</a>{% endif %}</td></tr>
{% endfor %}</table></body></html>"""
)


def _node_kind(node: fx.Node, pass_name: str) -> str:
    if meta.created_by(node) == pass_name:
        return "created"
    if node.op in ("placeholder", "output"):
        return "io"
    v = node.meta.get("val")
    if getattr(v, "dtype", None) is not None and not v.dtype.is_floating_point:
        return "integer"
    return "float"


def to_dot(gm: fx.GraphModule, pass_name: str) -> graphviz.Digraph:
    dot = graphviz.Digraph(name=pass_name or "graph", graph_attr={"rankdir": "TB"}, node_attr={"shape": "box", "style": "filled", "fontname": "monospace", "fontsize": "10"})
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            continue
        label = f"{node.name}\\n{target_name(node) if node.op == 'call_function' else node.op}\\n{type_str(node)}"
        if (qp := meta.qparams(node)) is not None:
            label += f"\\n{qp.describe()}"
        dot.node(node.name, label=label, fillcolor=_FILL[_node_kind(node, pass_name)])
        for inp in node.all_input_nodes:
            if inp.op != "get_attr":
                dot.edge(inp.name, node.name)
    return dot


@dataclass
class DumpEntry:
    index: int
    name: str
    changed: bool
    nodes: int
    ms: float
    stats: str
    stem: str
    svg: bool


@dataclass
class DumpWriter:
    directory: Path
    pipeline: str = ""
    svg: bool = True
    entries: list[DumpEntry] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def write(self, gm: fx.GraphModule, pass_name: str, changed: bool, ms: float, stats: str) -> Path:
        index = len(self.entries)
        stem = f"{index:02d}-{pass_name}"
        header = f"# after {pass_name} (changed={changed})\n"
        (self.directory / f"{stem}.txt").write_text(header + graph_text(gm))
        dot = to_dot(gm, pass_name)
        (self.directory / f"{stem}.dot").write_text(dot.source)
        has_svg = False
        if self.svg:
            try:
                (self.directory / f"{stem}.svg").write_bytes(dot.pipe(format="svg"))
                has_svg = True
            except graphviz.ExecutableNotFound:
                self.svg = False  # no Graphviz `dot` on this machine: text and DOT only
        nodes = sum(1 for n in gm.graph.nodes if n.op != "get_attr")
        self.entries.append(DumpEntry(index, pass_name, changed, nodes, ms, html.escape(stats), stem, has_svg))
        self._write_index()
        return self.directory / f"{stem}.txt"

    def _write_index(self) -> None:
        (self.directory / "index.html").write_text(_INDEX.render(entries=self.entries, pipeline=self.pipeline, fill=_FILL))
