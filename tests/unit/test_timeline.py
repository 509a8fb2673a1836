"""timeline: one lane per node, stacked rows for overlapping builds, extraction shading, axis, legend."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from buildfan.placement import Placement
from buildfan.report import BuildResult, Report, build_report
from buildfan.timeline import COLOURS, WIDTH, layout, render_svg, stack_rows, text_width, tick_step, write_svg
from tests.unit.test_ci import T0, at, build, sample_report

NS = {"svg": "http://www.w3.org/2000/svg"}


@pytest.fixture
def report() -> Report:
    return sample_report()


def parse(report: Report) -> ET.Element:
    return ET.fromstring(render_svg(report))


def lanes(svg: ET.Element) -> dict[str, ET.Element]:
    return {g.get("data-node", ""): g for g in svg.iterfind(".//svg:g[@class='lane']", NS)}


def builds(svg: ET.Element) -> dict[str, ET.Element]:
    return {g.get("data-image", ""): g for g in svg.iterfind(".//svg:g[@class='build']", NS)}


def bar_y(group: ET.Element) -> float:
    rect = group.find("svg:rect", NS)
    assert rect is not None
    return float(rect.get("y", "nan"))


def texts(element: ET.Element) -> list[str]:
    return ["".join(t.itertext()) for t in element.iterfind(".//svg:text", NS)]


def test_document(report: Report) -> None:
    svg = parse(report)
    assert svg.tag == "{http://www.w3.org/2000/svg}svg"
    assert (svg.get("width"), svg.get("font-size")) == (str(WIDTH), "12")
    assert svg.get("font-family") == "sans-serif"
    assert svg.get("viewBox") == f"0 0 {WIDTH} {svg.get('height')}"
    assert texts(svg)[0] == "buildfan run run-7f3a — 4 images: 3 succeeded, 1 failed; 2 nodes; 72.0 s"


def test_one_lane_per_node_with_zone_label(report: Report) -> None:
    by_node = lanes(parse(report))
    assert list(by_node) == ["node-a", "node-b"]
    assert texts(by_node["node-a"])[:2] == ["node-a", "eu-west-1a"]
    assert texts(by_node["node-b"])[:2] == ["node-b", "eu-west-1b"]


def test_overlapping_builds_are_stacked(report: Report) -> None:
    svg = parse(report)
    by_node, by_image = lanes(svg), builds(svg)
    assert by_node["node-a"].get("data-rows") == "2"  # api and web ran at the same time
    assert by_node["node-b"].get("data-rows") == "1"  # worker, then broken
    assert (by_image["api"].get("data-row"), by_image["web"].get("data-row")) == ("0", "1")
    assert bar_y(by_image["web"]) > bar_y(by_image["api"])
    assert bar_y(by_image["worker-py3.12"]) == bar_y(by_image["broken"])
    assert bar_y(by_image["worker-py3.12"]) > bar_y(by_image["web"])  # node-b's lane is below node-a's


def test_bars_colours_positions_and_extraction(report: Report) -> None:
    scale, _ = layout(report)
    by_image = builds(parse(report))
    rects = {name: g.findall("svg:rect", NS) for name, g in by_image.items()}
    api_bar = rects["api"][0]
    assert api_bar.get("fill") == COLOURS["succeeded"][0]
    assert float(api_bar.get("x", "0")) == pytest.approx(scale.at(2), abs=0.1)
    assert float(api_bar.get("width", "0")) == pytest.approx(scale.at(68) - scale.at(2), abs=0.1)
    assert rects["broken"][0].get("fill") == COLOURS["failed"][0]
    shades = {name: [r for r in rs if r.get("class") == "extraction"] for name, rs in rects.items()}
    counts = {name: len(s) for name, s in shades.items()}
    assert counts == {"api": 2, "web": 1, "worker-py3.12": 0, "broken": 1}
    assert {r.get("fill") for r in shades["api"]} == {COLOURS["succeeded"][1]}
    assert shades["broken"][0].get("fill") == COLOURS["failed"][1]
    second = shades["api"][1]
    assert float(second.get("x", "0")) == pytest.approx(scale.at(14.2), abs=0.1)
    assert float(second.get("width", "0")) == pytest.approx(scale.at(16) - scale.at(14.2), abs=0.1)
    assert [texts(g)[-1] for g in by_image.values()] == ["api", "web", "worker-py3.12", "broken"]


def test_axis_and_legend(report: Report) -> None:
    svg = parse(report)
    axis = svg.find(".//svg:g[@class='axis']", NS)
    legend = svg.find(".//svg:g[@class='legend']", NS)
    assert axis is not None and legend is not None
    assert texts(axis) == [f"{s}s" for s in range(0, 80, 10)]
    assert texts(legend)[:3] == ["succeeded", "failed", "layer extraction"]


def test_escaping_and_unplaced_lane() -> None:
    lost = BuildResult("<lost & found>", "failed", "b", None, at(0), at(3))
    placed = BuildResult("a\"b'c", "succeeded", "b2", Placement("p", "n&1", "z<1>"), at(0), at(5))
    svg = parse(build_report([placed, lost], "run<1>", "ns", T0, at(5)))
    assert list(lanes(svg)) == ["n&1", "unplaced"]
    assert set(builds(svg)) == {"a\"b'c", "<lost & found>"}
    assert texts(svg)[0].startswith("buildfan run run<1> — ")
    assert "z<1>" in texts(lanes(svg)["n&1"])


def test_empty_report() -> None:
    svg = parse(build_report([], "r", "ns", T0, at(1)))
    assert lanes(svg) == {} and "no builds" in texts(svg)


def test_short_bar_label_beside_and_stacking_uses_it() -> None:
    results = [build("long-running", "node-a", (0, 100)), build("quick", "node-a", (101, 102))]
    results.append(build("after", "node-a", (102.5, 103)))
    by_image = builds(parse(build_report(results, "r", "ns", T0, at(200))))
    quick = by_image["quick"].find("svg:text", NS)
    assert quick is not None and quick.get("fill") != "#ffffff"  # drawn beside the bar
    bar = by_image["quick"].find("svg:rect", NS)
    assert bar is not None and float(quick.get("x", "0")) > float(bar.get("x", "0"))
    # "after" does not overlap in time, but its bar would sit on quick's label
    assert [by_image[n].get("data-row") for n in ("long-running", "quick", "after")] == ["0", "0", "1"]


def test_stack_rows() -> None:
    assert stack_rows([]) == []
    assert stack_rows([(0, 10), (5, 15), (10, 20)]) == [0, 1, 0]
    assert stack_rows([(0, 10), (5, 15), (10, 20)], gap=1) == [0, 1, 2]
    assert stack_rows([(2, 9), (0, 10), (1, 3), (3.5, 4)]) == [2, 0, 1, 1]


def test_tick_step() -> None:
    assert [tick_step(s) for s in (5, 72, 600, 3000, 100_000)] == [1.0, 10.0, 60.0, 300.0, 10800.0]
    assert text_width("abc") == 21.0


def test_write_svg(tmp_path: Path, report: Report) -> None:
    target = tmp_path / "out" / "timeline.svg"
    write_svg(report, target)
    assert target.read_text(encoding="utf-8") == render_svg(report)
