"""ci: GitHub outputs, workflow commands and job summary; GitLab sections, junit, OpenMetrics, dotenv."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from buildfan import ci
from buildfan.placement import Placement
from buildfan.progress import LayerTiming
from buildfan.report import BuildResult, Report, build_report

T0 = datetime(2026, 12, 4, 15, 16, 50, tzinfo=UTC)
Span = tuple[float, float]
MS0 = int(T0.timestamp() * 1000)
DIGESTS = {name: "sha256:" + char * 64 for name, char in (("api", "a"), ("web", "b"), ("worker-py3.12", "c"))}
ERROR = 'process "/bin/sh -c make" did not complete: exit code: 2\n100% done, a,b <x> & "y"'


def at(second: float) -> datetime:
    return T0 + timedelta(seconds=second)


def layer(n: int, size: int, extract: Span) -> LayerTiming:
    start, end = extract
    return LayerTiming("sha256:" + f"{n:x}" * 32, size, at(start - 3), at(start - 0.5), at(start), at(end))


def build(image: str, node: str, span: Span, *layers: LayerTiming, **kw: object) -> BuildResult:
    zone = {"node-a": "eu-west-1a", "node-b": "eu-west-1b"}[node]
    return BuildResult(
        image=image,
        status=str(kw.pop("status", "succeeded")),
        builder=f"bf-{image}",
        placement=Placement(f"bf-{image}-0", node, zone, "m6i.xlarge", "on-demand"),
        started_at=at(span[0]),
        finished_at=at(span[1]),
        layers=layers,
        **kw,  # type: ignore[arg-type]
    )


def sample_results() -> list[BuildResult]:
    """node-a runs api and web at the same time (overlapping extractions); node-b runs worker, then the
    failed build."""
    return [
        build(
            "api",
            "node-a",
            (2, 68),
            layer(0xA1, 51_000_000, (10, 14)),
            layer(0xA2, 30_000_000, (14.2, 16)),
            digest=DIGESTS["api"],
            tags=("registry.example.com/api:1.2", "registry.example.com/api:latest"),
        ),
        build("web", "node-a", (5, 50), layer(0xB1, 45_000_000, (11, 15.5)), digest=DIGESTS["web"]),
        build("worker-py3.12", "node-b", (3, 40), digest=DIGESTS["worker-py3.12"], base_cached=True),
        build("broken", "node-b", (45, 70), layer(0xC1, 10_000_000, (46, 48)), status="failed", error=ERROR),
    ]


def sample_report() -> Report:
    return build_report(sample_results(), "run-7f3a", "ci", T0, at(72))


@pytest.fixture
def report() -> Report:
    return sample_report()


def one_image_report(name: str, **kw: object) -> Report:
    return build_report([build(name, "node-a", (0, 10), **kw)], "r", "ns", T0, at(10))


def test_activation() -> None:
    assert ci.github_active({"GITHUB_ACTIONS": "true"}) and not ci.github_active({})
    assert ci.gitlab_active({"GITLAB_CI": "true"}) and not ci.gitlab_active({"GITLAB_CI": "false"})


# -- GitHub outputs ------------------------------------------------------------------------------------


def test_github_outputs(report: Report) -> None:
    outputs = ci.github_outputs(report, Path("out/report.json"))
    assert set(outputs) == {"report", "digests", "placements", "metadata"}
    assert outputs["report"] == "out/report.json"
    assert json.loads(outputs["digests"]) == DIGESTS
    assert json.loads(outputs["placements"]) == {
        "api": "node-a",
        "web": "node-a",
        "worker-py3.12": "node-b",
        "broken": "node-b",
    }
    metadata = json.loads(outputs["metadata"])
    assert metadata["api"] == {
        "containerimage.digest": DIGESTS["api"],
        "image.name": "registry.example.com/api:1.2,registry.example.com/api:latest",
        "buildfan.node": "node-a",
        "buildfan.zone": "eu-west-1a",
    }
    assert metadata["broken"]["containerimage.digest"] is None
    assert metadata["web"]["image.name"] == ""


def parse_github_output(text: str) -> Iterator[tuple[str, str]]:
    """Read a $GITHUB_OUTPUT file the way the runner does."""
    lines = iter(text.split("\n"))
    for line in lines:
        if not line:
            continue
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delimiter = line.split("<<", 1)
            body = []
            for item in lines:
                if item == delimiter:
                    break
                body.append(item)
            else:
                raise AssertionError(f"unterminated heredoc {name}")
            yield name, "\n".join(body)
        else:
            name, value = line.split("=", 1)
            yield name, value


def test_format_github_outputs_heredoc(report: Report) -> None:
    outputs = ci.github_outputs(report, "report.json")
    counter = iter(range(100))
    text = ci.format_github_outputs(outputs, lambda: f"EOF_{next(counter)}")
    assert text.startswith("report=report.json\ndigests<<EOF_1\n{")
    assert f"\nplacements<<EOF_2\n{outputs['placements']}\nEOF_2\n" in text
    assert text.endswith("\nEOF_3\n")
    assert dict(parse_github_output(text)) == outputs


def test_output_entry_forms() -> None:
    assert ci.github_output_entry("count", "4", "D") == "count=4\n"
    assert ci.github_output_entry("log", "one\ntwo", "D") == "log<<D\none\ntwo\nD\n"
    assert ci.github_output_entry("list", '["a"]', "D") == 'list<<D\n["a"]\nD\n'
    with pytest.raises(ValueError, match="delimiter"):
        ci.github_output_entry("log", "a\nD\nb", "D")
    with pytest.raises(ValueError, match="invalid output name"):
        ci.github_output_entry("a=b", "1", "D")


def test_write_github_outputs_appends_with_random_delimiters(tmp_path: Path, report: Report) -> None:
    target = tmp_path / "github_output"
    target.write_text("earlier=1\n", encoding="utf-8")
    outputs = ci.github_outputs(report, "report.json")
    ci.write_github_outputs(outputs, target)
    text = target.read_text(encoding="utf-8")
    assert dict(parse_github_output(text)) == {"earlier": "1", **outputs}
    delimiters = re.findall(r"^\w+<<(\S+)$", text, re.MULTILINE)
    assert len(delimiters) == 3 and len(set(delimiters)) == 3
    assert all(re.fullmatch(r"ghadelimiter_[0-9a-f]{32}", d) for d in delimiters)


# -- GitHub workflow commands ---------------------------------------------------------------------------


def test_groups() -> None:
    assert ci.group_start("api") == "::group::build api"
    assert ci.group_start("a%b\nc") == "::group::build a%25b%0Ac"
    assert ci.group_end() == "::endgroup::"


def test_error_annotation_escaping() -> None:
    line = ci.error_annotation("api", "step failed: 100% broken\r\nexit 2", "services/api/Dockerfile", 3)
    assert line == (
        "::error file=services/api/Dockerfile,line=3,title=buildfan%3A api failed"
        "::step failed: 100%25 broken%0D%0Aexit 2"
    )
    odd = ci.error_annotation("a,b:c", "m", file="dir,1/Docker:file")
    assert odd == "::error file=dir%2C1/Docker%3Afile,title=buildfan%3A a%2Cb%3Ac failed::m"
    assert ci.error_annotation("x", "m") == "::error title=buildfan%3A x failed::m"


def test_error_annotations_one_per_failure(report: Report) -> None:
    (annotation,) = ci.error_annotations(report)
    assert annotation.startswith("::error title=buildfan%3A broken failed::process ")
    assert "%0A100%25 done, a,b" in annotation and "\n" not in annotation


# -- GitHub step summary --------------------------------------------------------------------------------


def table_rows(markdown: str, header: str) -> list[list[str]]:
    """Cells of the rows of the table whose header line starts with ``header``."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]])
    return rows


def test_step_summary_heading_and_tables(report: Report) -> None:
    text = ci.step_summary(report)
    assert text.splitlines()[0] == "## buildfan run run-7f3a: 4 images, 3 succeeded, 1 failed in 72.0 s"
    images = table_rows(text, "| image |")
    assert images == [
        ["api", "✅ succeeded", "66.0", "node-a", "eu-west-1a", "5.80", "14.0"],
        ["web", "✅ succeeded", "45.0", "node-a", "eu-west-1a", "4.50", "10.0"],
        ["worker-py3.12", "✅ succeeded", "37.0", "node-b", "eu-west-1b", "cached", "-"],
        ["broken", "❌ failed", "25.0", "node-b", "eu-west-1b", "2.00", "5.0"],
    ]
    assert "| --- | --- | ---: | --- | --- | ---: | ---: |" in text
    nodes = table_rows(text, "| node |")
    assert nodes == [
        ["node-a", "eu-west-1a", "2", "api, web", "2", "10.30", "12.2"],
        ["node-b", "eu-west-1b", "2", "worker-py3.12, broken", "1", "2.00", "5.0"],
    ]


def test_step_summary_failures(report: Report) -> None:
    text = ci.step_summary(report)
    assert '### Failures\n\n**broken**\n\n```text\nprocess "/bin/sh -c make"' in text
    assert '100% done, a,b <x> & "y"\n```' in text


def mermaid(text: str) -> list[str]:
    return text.split("```mermaid\n", 1)[1].split("\n```", 1)[0].splitlines()


def test_step_summary_gantt(report: Report) -> None:
    text = ci.step_summary(report)
    assert "### Timeline" in text and "<details>" not in text
    lines = mermaid(text)
    assert lines[:5] == [
        "gantt",
        "    title buildfan run run-7f3a",
        "    dateFormat x",
        "    axisFormat %H:%M:%S",
        "    todayMarker off",
    ]
    sections = [line.strip() for line in lines if line.strip().startswith("section ")]
    assert sections == ["section node-a (eu-west-1a)", "section node-b (eu-west-1b)"]
    assert f"    api :{MS0 + 2000}, {MS0 + 68000}" in lines
    assert f"    broken (failed) :{MS0 + 45000}, {MS0 + 70000}" in lines
    crit = [line for line in lines if ":crit," in line]
    assert len(crit) == 4
    assert f"    api extract {'a2' * 6} :crit, {MS0 + 14200}, {MS0 + 16000}" in crit
    node_b = lines.index("    section node-b (eu-west-1b)")
    assert [line.split(" :")[0].strip() for line in lines[node_b + 1 :]] == [
        "worker-py3.12",
        "broken (failed)",
        f"broken extract {'c1' * 6}",
    ]


def test_gantt_task_names_have_no_colons() -> None:
    lines = ci.mermaid_gantt(one_image_report("ns:img;x#y")).splitlines()
    task = next(line for line in lines if line.startswith("    ns"))
    name = task.split(" :")[0]
    assert name == "    ns img x y" and task.count(":") == 1


@pytest.mark.parametrize("image", ["gantt-renderer", "Section 8", "click", "call", "2026-01-02-nightly"])
def test_gantt_task_names_never_start_with_a_keyword(image: str) -> None:
    lines = ci.mermaid_gantt(one_image_report(image)).splitlines()
    assert lines[-1].startswith(f"    image {image} :")


def test_big_gantt_goes_into_details() -> None:
    results = [build(f"img{i}", "node-a", (i, i + 5)) for i in range(9)]
    text = ci.step_summary(build_report(results, "r", "ns", T0, at(20)))
    assert "<details><summary>Timeline: builds per node</summary>\n\n```mermaid\ngantt" in text
    assert text.rstrip().endswith("```\n\n</details>")
    assert "### Failures" not in text


def test_markdown_cells_escaped() -> None:
    text = ci.step_summary(one_image_report("a|b<c>"))
    assert table_rows(text, "| image |")[0][0] == "a\\|b&lt;c&gt;"


def test_write_step_summary_appends(tmp_path: Path, report: Report) -> None:
    target = tmp_path / "summary.md"
    target.write_text("# earlier\n", encoding="utf-8")
    ci.write_step_summary(report, target)
    assert target.read_text(encoding="utf-8") == "# earlier\n" + ci.step_summary(report)


# -- GitLab sections ------------------------------------------------------------------------------------


def test_sections() -> None:
    start = ci.section_start("build api:1.2", "Building api\nnow", now=1_700_000_000.7)
    assert start == "\x1b[0Ksection_start:1700000000:build_api_1.2[collapsed=true]\r\x1b[0KBuilding api now"
    open_start = ci.section_start("x", "X", collapsed=False, now=5)
    assert open_start == "\x1b[0Ksection_start:5:x\r\x1b[0KX"
    assert ci.section_end("build api:1.2", now=1_700_000_042) == (
        "\x1b[0Ksection_end:1700000042:build_api_1.2\r\x1b[0K"
    )


def test_section_default_time() -> None:
    stamp = int(re.findall(r"section_end:(\d+):", ci.section_end("x"))[0])
    assert abs(stamp - datetime.now(UTC).timestamp()) < 60


# -- GitLab junit ---------------------------------------------------------------------------------------


def test_junit(report: Report) -> None:
    text = ci.junit_xml(report)
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<testsuite ')
    suite = ET.fromstring(text)
    assert suite.tag == "testsuite"
    assert (suite.get("name"), suite.get("tests"), suite.get("failures")) == ("buildfan", "4", "1")
    assert (suite.get("errors"), suite.get("time")) == ("0", "72.000")
    cases = suite.findall("testcase")
    assert [(c.get("classname"), c.get("name"), c.get("time")) for c in cases] == [
        ("buildfan.node-a", "api", "66.000"),
        ("buildfan.node-a", "web", "45.000"),
        ("buildfan.node-b", "worker-py3.12", "37.000"),
        ("buildfan.node-b", "broken", "25.000"),
    ]
    assert [c.find("failure") is None for c in cases] == [True, True, True, False]
    failure = cases[3].find("failure")
    assert failure is not None
    assert failure.get("message") == 'process "/bin/sh -c make" did not complete: exit code: 2'
    assert failure.text == ERROR
    out = cases[0].findtext("system-out") or ""
    assert "node: node-a\nzone: eu-west-1a\nbuilder: bf-api\n" in out
    assert "extraction: 5.800 s over 2 layers, 14.0 MB/s" in out
    assert "extraction: none (base image cached)" in (cases[2].findtext("system-out") or "")
    assert "extraction: 2.000 s over 1 layer, 5.0 MB/s" in (cases[3].findtext("system-out") or "")


def test_junit_unplaced_and_control_characters() -> None:
    error = "\x1b[31mboom\x1b[0m\x07 <&>"
    result = BuildResult("lost", "failed", "bf-lost", None, at(0), at(1), error=error)
    suite = ET.fromstring(ci.junit_xml(build_report([result], "r", "ns", T0, at(1))))
    case = suite.find("testcase")
    assert case is not None and case.get("classname") == "buildfan.unplaced"
    failure = case.find("failure")
    assert failure is not None and failure.text == "boom\ufffd <&>"
    assert "node: unplaced" in (case.findtext("system-out") or "")


# -- GitLab OpenMetrics ---------------------------------------------------------------------------------


def samples(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    families = list(text_string_to_metric_families(text))
    assert all(f.type == "gauge" for f in families)
    return {f.name: {tuple(sorted(s.labels.items())): s.value for s in f.samples} for f in families}


def test_openmetrics_parses(report: Report) -> None:
    text = ci.openmetrics(report)
    assert text.endswith("\n# EOF\n")
    assert "# TYPE buildfan_build_duration_seconds gauge\n# HELP buildfan_build_duration_seconds " in text
    parsed = samples(text)
    assert parsed["buildfan_build_duration_seconds"] == {
        (("image", "api"), ("node", "node-a"), ("status", "succeeded")): 66.0,
        (("image", "web"), ("node", "node-a"), ("status", "succeeded")): 45.0,
        (("image", "worker-py3.12"), ("node", "node-b"), ("status", "succeeded")): 37.0,
        (("image", "broken"), ("node", "node-b"), ("status", "failed")): 25.0,
    }
    assert parsed["buildfan_extraction_seconds"][(("image", "api"), ("node", "node-a"))] == 5.8
    assert parsed["buildfan_extraction_seconds"][(("image", "worker-py3.12"), ("node", "node-b"))] == 0.0
    assert parsed["buildfan_node_builders"] == {(("node", "node-a"),): 2.0, (("node", "node-b"),): 2.0}
    assert parsed["buildfan_node_max_concurrent_extractions"] == {
        (("node", "node-a"),): 2.0,
        (("node", "node-b"),): 1.0,
    }


def test_openmetrics_label_escaping() -> None:
    name = 'we"ird\\na\nme'
    text = ci.openmetrics(one_image_report(name))
    assert 'image="we\\"ird\\\\na\\nme"' in text
    labels = next(iter(samples(text)["buildfan_extraction_seconds"]))
    assert dict(labels)["image"] == name


def test_openmetrics_empty_and_unplaced() -> None:
    assert samples(ci.openmetrics(build_report([], "r", "ns", T0, at(1))))["buildfan_node_builders"] == {}
    lost = BuildResult("lost", "failed", "bf-lost", None, at(0), at(1))
    parsed = samples(ci.openmetrics(build_report([lost], "r", "ns", T0, at(1))))
    durations = parsed["buildfan_build_duration_seconds"]
    assert durations == {(("image", "lost"), ("node", ""), ("status", "failed")): 1.0}


# -- GitLab dotenv and files ----------------------------------------------------------------------------


def test_dotenv(report: Report) -> None:
    assert ci.dotenv(report).splitlines() == [
        "BUILDFAN_RUN_ID=run-7f3a",
        "BUILDFAN_DIGEST_API=" + DIGESTS["api"],
        "BUILDFAN_DIGEST_WEB=" + DIGESTS["web"],
        "BUILDFAN_DIGEST_WORKER_PY3_12=" + DIGESTS["worker-py3.12"],
    ]
    assert ci.digest_variable("ghcr.io/org/app-ä") == "BUILDFAN_DIGEST_GHCR_IO_ORG_APP__"


def test_dotenv_follows_gitlab_rules(report: Report) -> None:
    text = ci.dotenv(report)
    assert text.endswith("\n") and "\n\n" not in text and "#" not in text and '"' not in text
    assert all(re.fullmatch(r"[A-Z0-9_]+=\S+", line) for line in text.splitlines())


def test_write_gitlab_reports(tmp_path: Path, report: Report) -> None:
    paths = ci.write_gitlab_reports(report, tmp_path / "reports")
    assert paths == {
        "junit": tmp_path / "reports" / "junit.xml",
        "metrics": tmp_path / "reports" / "metrics.txt",
        "dotenv": tmp_path / "reports" / "build.env",
    }
    assert paths["junit"].read_text(encoding="utf-8") == ci.junit_xml(report)
    assert paths["metrics"].read_text(encoding="utf-8") == ci.openmetrics(report)
    assert paths["dotenv"].read_text(encoding="utf-8") == ci.dotenv(report)
