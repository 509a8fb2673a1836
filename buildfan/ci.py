"""Run report -> what GitHub Actions and GitLab CI show natively.

GitHub Actions (``GITHUB_ACTIONS=true``): step outputs for ``$GITHUB_OUTPUT`` (``metadata`` shaped like
docker/build-push-action's), ``::group::`` / ``::error`` workflow commands, and a Markdown job summary
for ``$GITHUB_STEP_SUMMARY`` with per-image and per-node tables and a mermaid timeline.

GitLab CI (``GITLAB_CI=true``): collapsible log sections and the three ``artifacts:reports`` files:
``junit`` (one testcase per image), ``metrics`` (OpenMetrics text) and ``dotenv`` (digests for later
jobs).

Everything takes the report dict (schema in :mod:`buildfan.report`) and returns text; only the
``write_*`` helpers touch the filesystem, at the path they are given.
"""

from __future__ import annotations

import html
import json
import os
import re
import secrets
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from buildfan.report import Report

PathArg = str | os.PathLike[str]
Image = Mapping[str, Any]

GANTT_DETAILS_OVER = 8  # images; a bigger timeline goes into a collapsed <details>
GITLAB_FILES = {"junit": "junit.xml", "metrics": "metrics.txt", "dotenv": "build.env"}

_OUTPUT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_SECTION_INVALID = re.compile(r"[^A-Za-z0-9_.-]")
_ENV_INVALID = re.compile(r"[^A-Z0-9]")
_MERMAID_INVALID = re.compile(r"[:;#%<>\r\n]+")
# words mermaid's gantt lexer takes as a statement (case-insensitive) when a task name starts with them
_MERMAID_KEYWORD = re.compile(
    r"(gantt|dateformat|inclusiveenddates|topaxis|axisformat|tickinterval|includes|excludes|todaymarker"
    r"|weekday|weekend|title|acc|section|click|href|call|\d{4}-\d\d-\d\d)",
    re.IGNORECASE,
)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_XML_INVALID = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_STATUS_ICON = {"succeeded": "✅", "failed": "❌"}


def github_active(env: Mapping[str, str]) -> bool:
    """True inside a GitHub Actions job."""
    return env.get("GITHUB_ACTIONS") == "true"


def gitlab_active(env: Mapping[str, str]) -> bool:
    """True inside a GitLab CI job."""
    return env.get("GITLAB_CI") == "true"


# -- shared values -----------------------------------------------------------------------------------


def _node(image: Image) -> str:
    return str(image["node"]) if image["node"] else "unplaced"


def _fixed(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _extraction_text(image: Image) -> str:
    if image["base_cached"]:
        return "cached"
    return _fixed(image["extraction"]["total_s"], 2)


def _epoch_ms(value: str) -> int:
    return round(datetime.fromisoformat(value).timestamp() * 1000)


def _one_line(text: str) -> str:
    return " ".join(text.split())


# -- GitHub: step outputs ----------------------------------------------------------------------------


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _image_metadata(image: Image) -> dict[str, Any]:
    return {
        "containerimage.digest": image["digest"],
        "image.name": ",".join(image["tags"]),
        "buildfan.node": image["node"],
        "buildfan.zone": image["zone"],
    }


def github_outputs(report: Report, report_path: PathArg) -> dict[str, str]:
    """Step outputs: ``report`` (path), ``digests`` and ``placements`` (JSON objects keyed by image,
    images without a digest / node left out) and ``metadata`` (JSON, every image, nulls kept)."""
    images = report["images"]
    return {
        "report": os.fspath(report_path),
        "digests": _json({i["name"]: i["digest"] for i in images if i["digest"]}),
        "placements": _json({i["name"]: i["node"] for i in images if i["node"]}),
        "metadata": _json({i["name"]: _image_metadata(i) for i in images}),
    }


def new_delimiter() -> str:
    """A heredoc delimiter no value will contain by chance (the same shape actions/toolkit uses)."""
    return f"ghadelimiter_{secrets.token_hex(16)}"


def github_output_entry(name: str, value: str, delimiter: str) -> str:
    """One ``$GITHUB_OUTPUT`` entry: ``name=value``, or the heredoc form for multi-line or JSON values."""
    if not _OUTPUT_NAME.fullmatch(name):
        raise ValueError(f"invalid output name {name!r}")
    if "\n" not in value and "\r" not in value and not value.lstrip().startswith(("{", "[")):
        return f"{name}={value}\n"
    if delimiter in value:
        raise ValueError(f"output {name!r} contains its delimiter")
    return f"{name}<<{delimiter}\n{value}\n{delimiter}\n"


def format_github_outputs(outputs: Mapping[str, str], delimiter: Callable[[], str] = new_delimiter) -> str:
    """All outputs in ``$GITHUB_OUTPUT`` format, each heredoc with its own delimiter."""
    return "".join(github_output_entry(name, value, delimiter()) for name, value in outputs.items())


def write_github_outputs(outputs: Mapping[str, str], path: PathArg) -> None:
    """Append the outputs to the ``$GITHUB_OUTPUT`` file at ``path``."""
    with Path(path).open("a", encoding="utf-8") as target:
        target.write(format_github_outputs(outputs))


# -- GitHub: workflow commands -----------------------------------------------------------------------


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def group_start(image: str) -> str:
    """Opens a collapsed log group for one image's build output."""
    return f"::group::build {_escape_data(image)}"


def group_end() -> str:
    """Closes the current log group."""
    return "::endgroup::"


def error_annotation(image: str, message: str, file: str | None = None, line: int | None = None) -> str:
    """An ``::error`` annotation for a failed build, pointing at the Dockerfile line when known."""
    props = {"file": file, "line": None if line is None else str(line), "title": f"buildfan: {image} failed"}
    joined = ",".join(f"{key}={_escape_property(value)}" for key, value in props.items() if value is not None)
    return f"::error {joined}::{_escape_data(message)}"


def error_annotations(report: Report) -> list[str]:
    """One annotation per failed image, from the report's error text (no source location)."""
    return [
        error_annotation(image["name"], image["error"] or "build failed")
        for image in report["images"]
        if image["status"] == "failed"
    ]


# -- GitHub: step summary ----------------------------------------------------------------------------


def _md(value: Any) -> str:
    """A Markdown table cell: one line, HTML and pipes escaped."""
    text = "-" if value is None else _one_line(str(value))
    return html.escape(text, quote=False).replace("|", "\\|")


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[str]], right: frozenset[int]) -> str:
    """A GitHub-flavoured Markdown table; cells must already be escaped; ``right`` columns align right."""
    rule = ["---:" if i in right else "---" for i in range(len(headers))]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [list(headers), rule, *rows])


def _summary_heading(report: Report) -> str:
    s = report["summary"]
    return (
        f"## buildfan run {_md(report['run_id'])}: {s['images']} images, "
        f"{s['succeeded']} succeeded, {s['failed']} failed in {report['duration_s']:.1f} s"
    )


def _md_image_row(image: Image) -> list[str]:
    status = f"{_STATUS_ICON.get(image['status'], '')} {image['status']}".strip()
    return [
        _md(image["name"]),
        status,
        _fixed(image["duration_s"]),
        _md(image["node"]),
        _md(image["zone"]),
        _extraction_text(image),
        _fixed(image["extraction"]["mb_per_s"]),
    ]


def _md_node_row(node: Image) -> list[str]:
    return [
        _md(node["node"]),
        _md(node["zone"]),
        str(node["builder_count"]),
        _md(", ".join(node["builders"])),
        str(node["max_concurrent_extractions"]),
        _fixed(node["extraction_total_s"], 2),
        _fixed(node["extract_mb_per_s"]),
    ]


def _images_table(report: Report) -> str:
    headers = ("image", "status", "duration s", "node", "zone", "extraction s", "MB/s")
    return markdown_table(headers, map(_md_image_row, report["images"]), frozenset({2, 5, 6}))


def _nodes_table(report: Report) -> str:
    headers = ("node", "zone", "builders", "images", "max concurrent extractions", "extraction s", "MB/s")
    return markdown_table(headers, map(_md_node_row, report["nodes"]), frozenset({2, 4, 5, 6}))


def _fence(text: str) -> str:
    """A fenced code block longer than any backtick run inside ``text``."""
    longest = max((len(run) for run in re.findall("`+", text)), default=0)
    marks = "`" * max(3, longest + 1)
    return f"{marks}text\n{text}\n{marks}"


def _failure_block(image: Image) -> str:
    error = _ANSI.sub("", image["error"] or "build failed")
    return f"**{_md(image['name'])}**\n\n{_fence(error)}"


def _failures(report: Report) -> list[str]:
    failed = [i for i in report["images"] if i["status"] == "failed"]
    if not failed:
        return []
    return ["### Failures", *(_failure_block(image) for image in failed)]


def _mermaid_text(text: str) -> str:
    return _MERMAID_INVALID.sub(" ", text).strip() or "-"


def _task_name(image: str) -> str:
    """An image name as the start of a gantt task name: no colons, not read as a keyword."""
    name = _mermaid_text(image)
    return f"image {name}" if _MERMAID_KEYWORD.match(name) else name


def _extraction_tasks(image: Image, name: str) -> list[str]:
    tasks = []
    for layer in image["extraction"]["layers"]:
        start = layer["extract_started_at"]
        if start is None:
            continue
        end = layer["extract_completed_at"] or image["finished_at"]
        short = layer["digest"].removeprefix("sha256:")[:12]
        tasks.append(f"    {name} extract {short} :crit, {_epoch_ms(start)}, {_epoch_ms(end)}")
    return tasks


def _gantt_tasks(image: Image) -> list[str]:
    name = _task_name(image["name"])
    label = name if image["status"] == "succeeded" else f"{name} (failed)"
    build = f"    {label} :{_epoch_ms(image['started_at'])}, {_epoch_ms(image['finished_at'])}"
    return [build, *_extraction_tasks(image, name)]


def _gantt_sections(report: Report) -> list[str]:
    zones = {node["node"]: node["zone"] for node in report["nodes"]}
    by_node: dict[str, list[Image]] = {}
    for image in report["images"]:
        by_node.setdefault(_node(image), []).append(image)
    lines = []
    for node, images in by_node.items():
        zone = zones.get(node)
        lines.append(f"    section {_mermaid_text(f'{node} ({zone})' if zone else node)}")
        lines += [task for image in images for task in _gantt_tasks(image)]
    return lines


def mermaid_gantt(report: Report) -> str:
    """A mermaid ``gantt`` of builds per node: one section per node, extraction phases as ``crit``."""
    head = [
        "gantt",
        f"    title buildfan run {_mermaid_text(report['run_id'])}",
        "    dateFormat x",
        "    axisFormat %H:%M:%S",
        "    todayMarker off",
    ]
    return "\n".join([*head, *_gantt_sections(report)])


def _timeline_block(report: Report) -> str:
    block = f"```mermaid\n{mermaid_gantt(report)}\n```"
    if len(report["images"]) <= GANTT_DETAILS_OVER:
        return f"### Timeline\n\n{block}"
    return f"<details><summary>Timeline: builds per node</summary>\n\n{block}\n\n</details>"


def step_summary(report: Report) -> str:
    """The job summary: heading, per-image table, per-node table, failures, mermaid timeline."""
    parts = [_summary_heading(report), "### Images", _images_table(report)]
    if report["nodes"]:
        parts += ["### Nodes", _nodes_table(report)]
    parts += _failures(report)
    if report["images"]:
        parts.append(_timeline_block(report))
    return "\n\n".join(parts) + "\n"


def write_step_summary(report: Report, path: PathArg) -> None:
    """Append the job summary to the ``$GITHUB_STEP_SUMMARY`` file at ``path``."""
    with Path(path).open("a", encoding="utf-8") as target:
        target.write(step_summary(report))


# -- GitLab: log sections ----------------------------------------------------------------------------


def section_name(text: str) -> str:
    """A valid section name: characters other than ``[A-Za-z0-9_.-]`` become ``_``."""
    return _SECTION_INVALID.sub("_", text) or "_"


def _timestamp(now: float | None) -> int:
    return int(time.time() if now is None else now)


def section_start(name: str, header: str, collapsed: bool = True, now: float | None = None) -> str:
    """Opens a collapsible log section; ``now`` is a Unix time (default: the current time)."""
    options = "[collapsed=true]" if collapsed else ""
    stamp = _timestamp(now)
    return f"\x1b[0Ksection_start:{stamp}:{section_name(name)}{options}\r\x1b[0K{_one_line(header)}"


def section_end(name: str, now: float | None = None) -> str:
    """Closes the section opened with the same name."""
    return f"\x1b[0Ksection_end:{_timestamp(now)}:{section_name(name)}\r\x1b[0K"


# -- GitLab: junit -----------------------------------------------------------------------------------


def _xml_text(text: str) -> str:
    """Text XML 1.0 can carry: ANSI colour codes dropped, other control characters replaced."""
    return _XML_INVALID.sub("\ufffd", _ANSI.sub("", text))


def _system_out(image: Image) -> str:
    extraction = image["extraction"]
    if image["base_cached"]:
        extracted = "extraction: none (base image cached)"
    else:
        count = len(extraction["layers"])
        extracted = (
            f"extraction: {extraction['total_s']:.3f} s over {count} layer{'' if count == 1 else 's'}, "
            f"{_fixed(extraction['mb_per_s'])} MB/s"
        )
    lines = [f"node: {_node(image)}", f"zone: {image['zone'] or '-'}", f"builder: {image['builder']}"]
    return "\n".join([*lines, f"digest: {image['digest'] or '-'}", extracted])


def _testcase(suite: ET.Element, image: Image) -> None:
    case = ET.SubElement(
        suite,
        "testcase",
        classname=f"buildfan.{_node(image)}",
        name=_xml_text(image["name"]),
        time=f"{image['duration_s']:.3f}",
    )
    if image["status"] == "failed":
        error = _xml_text(image["error"] or "build failed")
        first = next((line for line in error.splitlines() if line.strip()), "build failed")
        ET.SubElement(case, "failure", message=first, type="BuildFailed").text = error
    ET.SubElement(case, "system-out").text = _xml_text(_system_out(image))


def junit_xml(report: Report) -> str:
    """A JUnit XML report: one ``buildfan`` testsuite, one testcase per image."""
    summary = report["summary"]
    suite = ET.Element(
        "testsuite",
        name="buildfan",
        tests=str(summary["images"]),
        failures=str(summary["failed"]),
        errors="0",
        time=f"{report['duration_s']:.3f}",
    )
    for image in report["images"]:
        _testcase(suite, image)
    ET.indent(suite)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"


# -- GitLab: OpenMetrics -----------------------------------------------------------------------------


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _sample(name: str, labels: Mapping[str, str], value: float) -> str:
    body = ",".join(f'{key}="{_label_value(text)}"' for key, text in labels.items())
    return f"{name}{{{body}}} {value!r}"


Samples = Iterable[tuple[Mapping[str, str], float]]


def _gauge(name: str, help_text: str, samples: Samples, unit: str | None = None) -> list[str]:
    head = [f"# TYPE {name} gauge", f"# HELP {name} {help_text}"]
    units = [f"# UNIT {name} {unit}"] if unit else []
    return head + units + [_sample(name, labels, value) for labels, value in samples]


def _image_labels(image: Image) -> dict[str, str]:
    return {"image": image["name"], "node": image["node"] or ""}


def _image_families(images: Sequence[Image]) -> list[str]:
    durations = [({**_image_labels(i), "status": i["status"]}, float(i["duration_s"])) for i in images]
    extractions = [(_image_labels(i), float(i["extraction"]["total_s"])) for i in images]
    duration_help = "Wall-clock seconds of each image build."
    extraction_help = "Seconds each build spent extracting base-image layers."
    return [
        *_gauge("buildfan_build_duration_seconds", duration_help, durations, "seconds"),
        *_gauge("buildfan_extraction_seconds", extraction_help, extractions, "seconds"),
    ]


def _node_families(nodes: Sequence[Image]) -> list[str]:
    builders = [({"node": n["node"]}, float(n["builder_count"])) for n in nodes]
    concurrent = [({"node": n["node"]}, float(n["max_concurrent_extractions"])) for n in nodes]
    concurrent_help = "Most builders extracting layers at the same instant on the node."
    return [
        *_gauge("buildfan_node_builders", "BuildKit builders that ran on the node.", builders),
        *_gauge("buildfan_node_max_concurrent_extractions", concurrent_help, concurrent),
    ]


def openmetrics(report: Report) -> str:
    """The GitLab ``metrics`` report: OpenMetrics text (gauges), ending in ``# EOF``."""
    lines = _image_families(report["images"]) + _node_families(report["nodes"])
    return "\n".join([*lines, "# EOF"]) + "\n"


# -- GitLab: dotenv ----------------------------------------------------------------------------------


def digest_variable(image: str) -> str:
    """``BUILDFAN_DIGEST_<IMAGE>``: the image name upper-cased, anything but A-Z and 0-9 -> ``_``."""
    return "BUILDFAN_DIGEST_" + _ENV_INVALID.sub("_", image.upper())


def dotenv(report: Report) -> str:
    """The GitLab ``dotenv`` report: the run id and one digest per built image, one ``KEY=value`` a line.

    GitLab's rules: no empty lines, comments, quotes or multi-line values; at most 5 kB (about 60
    images) and a per-plan limit on the number of variables.
    """
    lines = [f"BUILDFAN_RUN_ID={_one_line(report['run_id'])}"]
    lines += [f"{digest_variable(i['name'])}={i['digest']}" for i in report["images"] if i["digest"]]
    return "\n".join(lines) + "\n"


def write_gitlab_reports(report: Report, directory: PathArg) -> dict[str, Path]:
    """Write ``junit.xml``, ``metrics.txt`` and ``build.env`` into ``directory``; returns the paths by
    report kind (``junit``, ``metrics``, ``dotenv``, as in ``artifacts:reports``)."""
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    texts = {"junit": junit_xml(report), "metrics": openmetrics(report), "dotenv": dotenv(report)}
    paths = {kind: target / GITLAB_FILES[kind] for kind in texts}
    for kind, text in texts.items():
        paths[kind].write_text(text, encoding="utf-8")
    return paths
