"""Run report -> a self-contained SVG timeline of builds per node.

One horizontal lane per node (label on the left: node and zone), one bar per build coloured by status,
layer extraction shaded darker inside the bar, a time axis in seconds from the run start, a title line
and a legend. Builds on one node that overlap in time (or whose name, drawn beside a short bar, would
run into the next bar) are stacked in sub-rows, so co-located builders are all visible.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal
from xml.sax.saxutils import escape

from buildfan.report import Report

Image = Mapping[str, Any]
LabelSide = Literal["inside", "right", "left"]

WIDTH = 960
MARGIN = 16
TITLE_H = 44
ROW_H = 24
BAR_H = 18
LANE_PAD = 6
AXIS_H = 28
LEGEND_H = 28
CHAR_W = 7.0  # a generous average advance of 12px sans-serif
GAP = 4.0  # px between stacked neighbours and between a bar and a label beside it
LABEL_MIN, LABEL_MAX = 96.0, 260.0

COLOURS = {
    "succeeded": ("#2da44e", "#116329"),  # bar, extraction
    "failed": ("#cf222e", "#82071e"),
}
TEXT, MUTED, GRID = "#24292f", "#57606a", "#d0d7de"
LANE_FILLS = ("#f6f8fa", "#ffffff")
_ATTR = {'"': "&quot;"}


def _attr(value: object) -> str:
    return escape(str(value), _ATTR)


def text_width(text: str) -> float:
    """Estimated width in px of ``text`` at 12px sans-serif."""
    return len(text) * CHAR_W


def _fit(text: str, width: float) -> str:
    """``text`` cut with an ellipsis to fit ``width`` px."""
    if text_width(text) <= width:
        return text
    keep = max(int(width / CHAR_W) - 1, 1)
    return text[:keep] + "…"


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value)


# -- geometry ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scale:
    """Maps report times to x pixels: ``left`` is the run start, ``right`` its end."""

    start: datetime
    seconds: float
    left: float
    right: float

    def x(self, value: str) -> float:
        offset = (_time(value) - self.start).total_seconds()
        return self.left + offset / self.seconds * (self.right - self.left)

    def at(self, second: float) -> float:
        return self.left + second / self.seconds * (self.right - self.left)


def _scale(report: Report, left: float) -> Scale:
    start = _time(report["started_at"])
    ends = [_time(report["finished_at"]), *(_time(i["finished_at"]) for i in report["images"])]
    seconds = max((max(ends) - start).total_seconds(), 1.0)
    return Scale(start, seconds, left, WIDTH - MARGIN)


def stack_rows(spans: Sequence[tuple[float, float]], gap: float = 0.0) -> list[int]:
    """Sub-row of each (start, end) span: first-fit in start order, so the number of rows is the most
    spans overlapping at one point; spans closer than ``gap`` count as overlapping."""
    rows: list[int] = [0] * len(spans)
    ends: list[float] = []
    for index in sorted(range(len(spans)), key=lambda i: spans[i]):
        start, end = spans[index]
        row = next((r for r, last in enumerate(ends) if last + gap <= start), len(ends))
        if row == len(ends):
            ends.append(end)
        ends[row] = end
        rows[index] = row
    return rows


@dataclass(frozen=True)
class Bar:
    """One build's bar: its pixel span and where its name goes (``inside``, ``right`` or ``left`` of it)."""

    image: Image
    x0: float
    x1: float
    label: LabelSide

    @property
    def extent(self) -> tuple[float, float]:
        """Pixels the bar and its name cover."""
        outside = GAP + text_width(self.image["name"])
        if self.label == "right":
            return self.x0, self.x1 + outside
        return (self.x0 - outside, self.x1) if self.label == "left" else (self.x0, self.x1)


def _label_side(name: str, x0: float, x1: float) -> LabelSide:
    if text_width(name) + 2 * GAP <= x1 - x0:
        return "inside"
    return "right" if x1 + GAP + text_width(name) <= WIDTH - MARGIN else "left"


def _bar(image: Image, scale: Scale) -> Bar:
    x0 = scale.x(image["started_at"])
    x1 = max(scale.x(image["finished_at"]), x0 + 2)
    return Bar(image, x0, x1, _label_side(image["name"], x0, x1))


@dataclass(frozen=True)
class Lane:
    """One node's lane: its bars, each bar's sub-row, and where the lane sits."""

    node: str
    zone: str | None
    bars: list[Bar]
    rows: list[int]
    top: float

    @property
    def height(self) -> float:
        return (max(self.rows, default=0) + 1) * ROW_H + 2 * LANE_PAD


def _groups(report: Report) -> list[tuple[str, str | None, list[Image]]]:
    """(node, zone, images) per node in report order, then images without a node as ``unplaced``."""
    images = report["images"]
    groups = [(n["node"], n["zone"], [i for i in images if i["node"] == n["node"]]) for n in report["nodes"]]
    unplaced = [i for i in images if not i["node"]]
    return groups + ([("unplaced", None, unplaced)] if unplaced else [])


def _label_width(groups: Iterable[tuple[str, str | None, list[Image]]]) -> float:
    widest = max((text_width(max(node, zone or "", key=len)) for node, zone, _ in groups), default=0.0)
    return min(max(widest + 2 * MARGIN, LABEL_MIN), LABEL_MAX)


def layout(report: Report) -> tuple[Scale, list[Lane]]:
    """The time scale and the lanes, stacked top to bottom below the title."""
    groups = _groups(report)
    scale = _scale(report, _label_width(groups))
    lanes, top = [], float(TITLE_H)
    for node, zone, images in groups:
        bars = [_bar(image, scale) for image in images]
        lane = Lane(node, zone, bars, stack_rows([b.extent for b in bars], GAP), top)
        lanes.append(lane)
        top += lane.height
    return scale, lanes


# -- drawing -----------------------------------------------------------------------------------------


def _rect(x: float, y: float, w: float, h: float, fill: str, extra: str = "", tip: str = "") -> str:
    head = f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(w, 0.0):.1f}" height="{h:.1f}" fill="{fill}"{extra}'
    return f"{head}><title>{escape(tip)}</title></rect>" if tip else f"{head}/>"


def _text(x: float, y: float, content: str, extra: str = "") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}"{extra}>{escape(content)}</text>'


def _line(x1: float, y1: float, x2: float, y2: float, stroke: str) -> str:
    return f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{stroke}"/>'


def _tooltip(image: Image) -> str:
    extraction = image["extraction"]
    extracted = "base cached" if image["base_cached"] else f"extraction {extraction['total_s']:.2f} s"
    return f"{image['name']}: {image['status']} in {image['duration_s']:.1f} s, {extracted}"


def _extraction_rects(bar: Bar, y: float, scale: Scale) -> list[str]:
    shade = COLOURS[bar.image["status"]][1]
    rects = []
    for layer in bar.image["extraction"]["layers"]:
        if layer["extract_started_at"] is None:
            continue
        end = layer["extract_completed_at"] or bar.image["finished_at"]
        x0, x1 = max(scale.x(layer["extract_started_at"]), bar.x0), min(scale.x(end), bar.x1)
        tip = f"extract {layer['digest']}: {layer['extract_s'] or 0:.2f} s"
        rects.append(_rect(x0, y, max(x1 - x0, 1.0), BAR_H, shade, ' class="extraction"', tip))
    return rects


def _bar_label(bar: Bar, y: float) -> str:
    name = bar.image["name"]
    baseline = y + BAR_H / 2 + 4
    if bar.label == "inside":
        return _text(bar.x0 + GAP, baseline, name, ' fill="#ffffff"')
    if bar.label == "right":
        return _text(bar.x1 + GAP, baseline, name, f' fill="{TEXT}"')
    return _text(bar.x0 - GAP, baseline, name, f' fill="{TEXT}" text-anchor="end"')


def _bar_svg(bar: Bar, row: int, top: float, scale: Scale) -> str:
    y = top + LANE_PAD + row * ROW_H + (ROW_H - BAR_H) / 2
    image = bar.image
    data = f'data-image="{_attr(image["name"])}" data-status="{_attr(image["status"])}" data-row="{row}"'
    head = f'<g class="build" {data}>'
    fill = COLOURS[image["status"]][0]
    body = [_rect(bar.x0, y, bar.x1 - bar.x0, BAR_H, fill, ' rx="3"', _tooltip(image))]
    return "".join([head, *body, *_extraction_rects(bar, y, scale), _bar_label(bar, y), "</g>"])


def _lane_label(lane: Lane, width: float) -> list[str]:
    middle = lane.top + lane.height / 2
    bold = f' font-weight="bold" fill="{TEXT}"'
    if lane.zone is None:
        return [_text(MARGIN, middle + 4, _fit(lane.node, width), bold)]
    return [
        _text(MARGIN, middle - 3, _fit(lane.node, width), bold),
        _text(MARGIN, middle + 12, _fit(lane.zone, width), f' fill="{MUTED}"'),
    ]


def _lane_background(index: int, lane: Lane) -> str:
    return _rect(0, lane.top, WIDTH, lane.height, LANE_FILLS[index % 2])


def _lane_svg(lane: Lane, scale: Scale) -> str:
    rows = max(lane.rows, default=0) + 1
    head = f'<g class="lane" data-node="{_attr(lane.node)}" data-rows="{rows}">'
    labels = _lane_label(lane, scale.left - 2 * MARGIN)
    bars = [_bar_svg(bar, row, lane.top, scale) for bar, row in zip(lane.bars, lane.rows, strict=True)]
    return "".join([head, *labels, *bars, "</g>"])


def tick_step(seconds: float, most: int = 10) -> float:
    """A round tick interval giving at most ``most`` intervals over ``seconds``."""
    for step in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600):
        if seconds / step <= most:
            return float(step)
    return float(3600 * (int(seconds / 3600 / most) + 1))


def _grid_svg(scale: Scale, top: float, bottom: float) -> list[str]:
    step = tick_step(scale.seconds)
    parts = ['<g class="axis">', _line(scale.left, bottom, scale.right, bottom, MUTED)]
    for tick in range(int(scale.seconds // step) + 1):
        x = scale.at(tick * step)
        parts.append(_line(x, top, x, bottom + 4, GRID))
        parts.append(_text(x, bottom + 18, f"{tick * step:g}s", f' fill="{MUTED}" text-anchor="middle"'))
    return [*parts, "</g>"]


def _legend_svg(y: float) -> list[str]:
    items = [
        (COLOURS["succeeded"][0], "succeeded"),
        (COLOURS["failed"][0], "failed"),
        (COLOURS["succeeded"][1], "layer extraction"),
    ]
    parts, x = ['<g class="legend">'], float(MARGIN)
    for colour, label in items:
        parts += [_rect(x, y - 10, 14, 12, colour, ' rx="2"'), _text(x + 20, y, label, f' fill="{TEXT}"')]
        x += 20 + text_width(label) + MARGIN
    note = "builds on one node that overlap in time are stacked in rows"
    return [*parts, _text(x + MARGIN, y, note, f' fill="{MUTED}"'), "</g>"]


def _title_svg(report: Report) -> str:
    s = report["summary"]
    totals = (
        f" — {s['images']} images: {s['succeeded']} succeeded, {s['failed']} failed; "
        f"{len(report['nodes'])} nodes; {report['duration_s']:.1f} s"
    )
    run = escape(f"buildfan run {report['run_id']}")
    return (
        f'<text x="{MARGIN}" y="28" font-size="15" fill="{TEXT}"><tspan font-weight="bold">{run}</tspan>'
        f"{escape(totals)}</text>"
    )


def render_svg(report: Report) -> str:
    """The whole timeline as an SVG document."""
    scale, lanes = layout(report)
    bottom = lanes[-1].top + lanes[-1].height if lanes else TITLE_H + 32.0
    height = bottom + AXIS_H + LEGEND_H
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0f}" '
        f'viewBox="0 0 {WIDTH} {height:.0f}" font-family="sans-serif" font-size="12">'
    )
    parts = [head, _rect(0, 0, WIDTH, height, "#ffffff"), _title_svg(report)]
    parts += [_lane_background(index, lane) for index, lane in enumerate(lanes)]
    parts += _grid_svg(scale, TITLE_H, bottom)
    parts += [_lane_svg(lane, scale) for lane in lanes]
    if not lanes:
        parts.append(_text(MARGIN, TITLE_H + 20, "no builds", f' fill="{MUTED}"'))
    return "\n".join([*parts, *_legend_svg(bottom + AXIS_H + 16), "</svg>"]) + "\n"


def write_svg(report: Report, path: str | os.PathLike[str]) -> None:
    """Write the timeline SVG, creating parent directories."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render_svg(report), encoding="utf-8")
