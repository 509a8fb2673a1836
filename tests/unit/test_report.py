"""report: results built from the real captures, node aggregation, overlap counting, the table."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from buildfan.placement import Placement
from buildfan.progress import LayerTiming, ProgressTracker
from buildfan.report import (
    SCHEMA,
    BuildResult,
    Report,
    build_report,
    format_table,
    iso,
    max_concurrent,
    write_report,
)

FIXTURES = Path(__file__).parents[1] / "fixtures" / "progress"
T0 = datetime(2026, 12, 4, 15, 16, 50, tzinfo=UTC)
NODE_A = Placement("bf-cold-0", "node-a", "zone-1", "m5.large", "spot", T0, T0 + timedelta(seconds=3))
NODE_A2 = Placement("bf-conc-0", "node-a", "zone-1", "m5.large", "spot")
NODE_B = Placement("bf-warm-0", "node-b")


def tracked(name: str) -> ProgressTracker:
    tracker = ProgressTracker()
    with (FIXTURES / name).open(encoding="utf-8") as stream:
        for line in stream:
            tracker.feed(line)
    return tracker


def result(
    image: str, fixture: str | None, placement: Placement | None, status: str = "succeeded", **kw: object
) -> BuildResult:
    tracker = tracked(fixture) if fixture else ProgressTracker()
    return BuildResult(
        image=image,
        status=status,
        builder=f"bf-{image}",
        placement=placement,
        started_at=T0,
        finished_at=T0 + timedelta(seconds=95.12345),
        digest=None if status == "failed" else "sha256:d1",
        layers=tracker.layers(),
        base_cached=tracker.base_cached,
        **kw,  # type: ignore[arg-type]
    )


def fixture_results() -> list[BuildResult]:
    return [
        result("cold", "cold-pull-two-layers.jsonl", NODE_A, tags=("r/cold:1",), matrix_values=(("py", "3.12"),)),
        result("conc", "concurrent-distinct-base.jsonl", NODE_A2),
        result("warm", "warm-cached-base.jsonl", NODE_B),
        result("broken", None, None, status="failed", error="failed to solve: exit code: 2\nmore"),
    ]


@pytest.fixture
def report() -> Report:
    return build_report(fixture_results(), "run-1", "ci", T0, T0 + timedelta(minutes=2, seconds=0.0004))


def image(report: Report, name: str) -> Report:
    return next(i for i in report["images"] if i["name"] == name)


def test_top_level(report: Report) -> None:
    assert report["schema"] == SCHEMA
    assert (report["run_id"], report["namespace"]) == ("run-1", "ci")
    assert report["started_at"] == "2026-12-04T15:16:50Z"
    assert report["duration_s"] == 120.0
    assert report["summary"] == {"images": 4, "succeeded": 3, "failed": 1}
    json.dumps(report)  # JSON-ready


def test_cold_image_entry(report: Report) -> None:
    cold = image(report, "cold")
    assert (cold["node"], cold["zone"], cold["pod"], cold["capacity_type"]) == (
        "node-a",
        "zone-1",
        "bf-cold-0",
        "spot",
    )
    assert cold["ready_at"] == "2026-12-04T15:16:53Z"
    assert cold["duration_s"] == 95.123
    assert (cold["tags"], cold["matrix"], cold["base_cached"]) == (["r/cold:1"], {"py": "3.12"}, False)
    extraction = cold["extraction"]
    assert extraction["compressed_bytes"] == 51105567 + 50234839
    assert extraction["total_s"] == round(1.277026 + 1.002558, 3)
    assert extraction["mb_per_s"] == round((51105567 + 50234839) / 1e6 / (1.277026 + 1.002558), 3)
    first = extraction["layers"][1]
    assert first["digest"].startswith("sha256:e487860f")
    assert first["extract_started_at"] == "2026-12-04T15:17:00.620441Z"
    assert first["extract_s"] == 1.277


def test_warm_image_has_empty_extraction(report: Report) -> None:
    warm = image(report, "warm")
    assert warm["base_cached"] is True
    assert warm["extraction"] == {
        "total_s": 0.0,
        "download_total_s": 0.0,
        "compressed_bytes": 0,
        "mb_per_s": None,
        "layers": [],
    }
    assert (warm["zone"], warm["instance_type"]) == (None, None)


def test_failed_image_without_placement(report: Report) -> None:
    broken = image(report, "broken")
    assert (broken["status"], broken["node"], broken["pod"], broken["digest"]) == ("failed", None, None, None)
    assert broken["error"] == "failed to solve: exit code: 2\nmore"
    assert broken["scheduled_at"] is None


def test_nodes(report: Report) -> None:
    node_a, node_b = report["nodes"]
    assert node_a["node"] == "node-a" and node_a["zone"] == "zone-1"
    assert node_a["builders"] == ["cold", "conc"] and node_a["builder_count"] == 2
    assert node_a["extraction_total_s"] == round(1.277026 + 1.002558 + 2.675448 + 2.906243, 3)
    assert node_a["max_concurrent_extractions"] == 1  # the two captures ran a minute apart
    assert node_b == {
        "node": "node-b",
        "zone": None,
        "builders": ["warm"],
        "builder_count": 1,
        "extraction_total_s": 0.0,
        "extract_mb_per_s": None,
        "max_concurrent_extractions": 0,
    }


# -- overlap counting ----------------------------------------------------------------------------------


def at(second: float) -> datetime:
    return T0 + timedelta(seconds=second)


def layer(start: float, end: float | None, digest: str = "sha256:l1", size: int = 10_000_000) -> LayerTiming:
    return LayerTiming(digest, size, extract_started=at(start), extract_completed=None if end is None else at(end))


def placed(image: str, builder: str, *layers: LayerTiming, node: str = "n1") -> BuildResult:
    end = at(60)
    return BuildResult(image, "succeeded", builder, Placement(f"{builder}-0", node), at(0), end, None, layers)


def test_overlapping_builders_on_one_node() -> None:
    results = [
        placed("a", "ba", layer(0, 2), layer(2, 3, "sha256:l2")),
        placed("b", "bb", layer(1, 4)),
        placed("c", "bc", layer(2.5, 5)),
        placed("d", "bd", layer(3, 3.5), node="n2"),
    ]
    n1, n2 = build_report(results, "r", "ns", at(0), at(60))["nodes"]
    assert n1["max_concurrent_extractions"] == 3  # at 2.5-3: a, b, c
    assert n1["extraction_total_s"] == 2 + 1 + 3 + 2.5
    assert n1["extract_mb_per_s"] == round(40 / 8.5, 3)
    assert n2["max_concurrent_extractions"] == 1


def test_touching_spans_do_not_overlap() -> None:
    assert max_concurrent({"a": [(at(0), at(2))], "b": [(at(2), at(4))]}) == 1


def test_one_builder_counts_once() -> None:
    assert max_concurrent({"a": [(at(0), at(3)), (at(1), at(2))], "b": [(at(1), at(1.5))]}) == 2
    assert max_concurrent({}) == 0


def test_shared_builder_extraction_counted_once() -> None:
    shared = layer(0, 2)
    results = [placed("a", "shared", shared), placed("b", "shared", shared)]
    (node,) = build_report(results, "r", "ns", at(0), at(60))["nodes"]
    assert (node["builder_count"], node["extraction_total_s"], node["max_concurrent_extractions"]) == (
        1,
        2.0,
        1,
    )
    assert node["builders"] == ["a", "b"]


def test_unfinished_extraction_lasts_until_build_end() -> None:
    results = [placed("a", "ba", layer(0, None)), placed("b", "bb", layer(30, 31))]
    (node,) = build_report(results, "r", "ns", at(0), at(60))["nodes"]
    assert node["max_concurrent_extractions"] == 2
    assert node["extraction_total_s"] == 1.0


# -- values, table, file -------------------------------------------------------------------------------


def test_build_result_validates_status() -> None:
    with pytest.raises(ValueError, match="status"):
        BuildResult("x", "ok", "b", None, at(0), at(1), None, ())
    assert placed("a", "b").duration_s == 60.0


def test_iso() -> None:
    assert iso(datetime(2026, 1, 2, 3, 4, 5, 600)) == "2026-01-02T03:04:05.000600Z"
    east = datetime(2026, 1, 2, 7, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    assert iso(east) == "2026-01-02T05:04:05Z"
    assert iso(None) is None


def test_format_table(report: Report) -> None:
    text = format_table(report)
    lines = text.splitlines()
    assert lines[0] == "run run-1: 4 images, 3 succeeded, 1 failed in 120.0s"
    header = lines[2]
    assert header.split() == [
        "IMAGE",
        "STATUS",
        "NODE",
        "ZONE",
        "DURATION",
        "S",
        "EXTRACT",
        "S",
        "MB/S",
        "LAYERS",
    ]
    cold = next(row for row in lines if row.startswith("cold "))
    assert cold.split() == ["cold", "succeeded", "node-a", "zone-1", "95.1", "2.28", "44.5", "2"]
    assert len(cold) == len(header)  # right-aligned columns end together
    assert next(row for row in lines if row.startswith("warm ")).split()[5] == "cached"
    assert "node-b  -" in text
    assert lines[-1] == "  broken: failed to solve: exit code: 2"


def test_format_table_empty_run() -> None:
    text = format_table(build_report([], "r", "ns", at(0), at(1)))
    assert "IMAGE" in text and "MAX CONCURRENT" in text and "failures" not in text


def test_write_report(tmp_path: Path, report: Report) -> None:
    target = tmp_path / "out" / "report.json"
    write_report(report, target)
    assert json.loads(target.read_text(encoding="utf-8")) == report
