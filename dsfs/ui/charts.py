"""The UI's pictures, drawn on the server as SVG: a dataset's lineage graph and horizontal bar
charts (files and bytes per version, histograms of previews and statistics). This module computes
geometry only; the templates draw it, so every label goes through Jinja2's escaping like any other
text, and no script or chart library reaches the browser.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dsfs.model import VersionInfo

ROW = 34  # pixels between two versions of the lineage graph
COLUMN = 120  # pixels between two generations
MARGIN = 20
BAR_ROW = 22
BAR_LABEL = 150  # pixels left of the bars for their labels
BAR_WIDTH = 320


@dataclass
class Graph:
    width: int
    height: int
    nodes: list[dict] = field(default_factory=list)  # x, y, label, id, state, outside (another dataset's)
    edges: list[dict] = field(default_factory=list)  # x1, y1, x2, y2, kind (parent | source)


def lineage(versions: list[VersionInfo], names: dict[str, str]) -> Graph:
    """The versions of a dataset (in version order), one row each, in the column of their
    generation (1 + that of their deepest parent in the dataset); parents and squash sources from
    elsewhere (other datasets, deleted versions) are drawn as outside nodes in the first column.
    `names` labels outside ids that could be read (id -> project/name@version)."""
    inside = {v.id for v in versions}
    outside = list(dict.fromkeys(p for v in versions for p in [*v.parents, *v.sources] if p not in inside))
    generation: dict[str, int] = {p: 0 for p in outside}
    first = 1 if outside else 0
    for v in versions:  # version order puts a parent first almost always; a later one counts as outside depth
        generation[v.id] = max([generation.get(p, first - 1) + 1 for p in [*v.parents, *v.sources]] + [first])
    rows = [*outside, *[v.id for v in versions]]
    place = {node: (MARGIN + 8 + generation[node] * COLUMN, MARGIN + 8 + i * ROW) for i, node in enumerate(rows)}
    graph = Graph(width=MARGIN * 2 + 16 + max(generation.values(), default=0) * COLUMN + 200,
                  height=MARGIN * 2 + 16 + max(len(rows) - 1, 0) * ROW)
    for node in outside:
        x, y = place[node]
        graph.nodes.append({"x": x, "y": y, "id": node, "label": names.get(node, node[:8] + " (not here)"),
                            "state": "", "outside": True})
    for v in versions:
        x, y = place[v.id]
        graph.nodes.append({"x": x, "y": y, "id": v.id, "label": f"{v.version} ({v.state})", "state": v.state,
                            "outside": False})
        for kind, ids in (("parent", v.parents), ("source", v.sources)):
            for p in ids:
                px, py = place[p]
                graph.edges.append({"x1": px, "y1": py, "x2": x, "y2": y, "kind": kind})
    return graph


@dataclass
class Bars:
    width: int
    height: int
    rows: list[dict] = field(default_factory=list)  # y, label, width, text


def bars(rows: list[tuple[str, float, str]]) -> Bars:
    """A horizontal bar chart: one (label, value, text shown after the bar) a row, the longest
    bar BAR_WIDTH pixels."""
    top = max((value for _, value, _ in rows if value > 0), default=1)
    chart = Bars(width=BAR_LABEL + BAR_WIDTH + 120, height=MARGIN + len(rows) * BAR_ROW)
    for i, (label, value, text) in enumerate(rows):
        chart.rows.append({"y": MARGIN // 2 + i * BAR_ROW, "label": label[:24],
                           "width": max(1, round(BAR_WIDTH * max(value, 0) / top)) if value else 0, "text": text})
    return chart
