"""buildfan.console: event lines, and the plain, CI-grouped and live terminal views (drawn by hand)."""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime, timedelta

import pytest

from buildfan.console import Grouped, Live, Plain, choose, describe, finished_line
from buildfan.placement import Placement
from buildfan.progress import EventKind, ProgressEvent, SourceLocation
from buildfan.report import BuildResult

T0 = datetime(2026, 12, 4, 15, 16, 50, tzinfo=UTC)
LAYER = "sha256:" + "ab" * 32
STAMP = r"\s*\d+\.\ds  "


def ev(kind: EventKind, name: str = LAYER, at: float | None = None, detail: str | None = None) -> ProgressEvent:
    return ProgressEvent(kind, "v1", name, None if at is None else T0 + timedelta(seconds=at), detail)


def succeeded(image: str = "api") -> BuildResult:
    return BuildResult(image, "succeeded", f"bf-{image}", Placement("p", "node-a"), T0, T0 + timedelta(seconds=30))


def failed(image: str = "api", error: str | None = "exit code: 2\nmore", line: int | None = 3) -> BuildResult:
    loc = None if line is None else SourceLocation("services/api/Dockerfile", line)
    return BuildResult(
        image, "failed", f"bf-{image}", None, T0, T0 + timedelta(seconds=5), error=error, error_location=loc
    )


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


# --- describe ------------------------------------------------------------------------------------------


def test_describe_vertex_started() -> None:
    assert describe(ev("vertex_started", "[1/2] FROM docker.io/library/python:3.12")) == (
        "[1/2] FROM docker.io/library/python:3.12"
    )


def test_describe_hides_internal_vertices() -> None:
    assert describe(ev("vertex_started", "[internal] load build definition from Dockerfile")) is None


def test_describe_vertex_errored() -> None:
    assert (
        describe(ev("vertex_errored", "[2/2] RUN make", detail="exit code: 2"))
        == "ERROR in [2/2] RUN make: exit code: 2"
    )


def test_describe_download_completed() -> None:
    assert describe(ev("download_completed", detail="51234567")) == "pulled sha256:abababababab (51.2 MB)"
    assert describe(ev("download_completed")) == "pulled sha256:abababababab"


def test_describe_extract_completed() -> None:
    assert describe(ev("extract_completed"), 1.234) == "extracted sha256:abababababab in 1.23s"
    assert describe(ev("extract_completed")) == "extracted sha256:abababababab"


@pytest.mark.parametrize("kind", ["vertex_completed", "download_started", "extract_started", "warning"])
def test_describe_quiet_kinds(kind: EventKind) -> None:
    assert describe(ev(kind)) is None


def test_finished_line() -> None:
    assert finished_line(succeeded()) == "succeeded in 30.0s on node-a"
    assert finished_line(failed()) == "FAILED after 5.0s: exit code: 2"
    assert finished_line(failed(error=None)) == "FAILED after 5.0s: "


# --- Plain ---------------------------------------------------------------------------------------------


def test_plain_lines() -> None:
    out = io.StringIO()
    with Plain(out) as view:
        view.event("api", "creating builder")
        view.event("api", ev("vertex_started", "[internal] load"))
        view.event("api", ev("extract_started", at=1.0))
        view.event("api", ev("extract_completed", at=3.5))
        view.event("worker", ev("vertex_started", "[1/1] FROM scratch"))
        view.event("api", succeeded())
    lines = out.getvalue().splitlines()
    assert len(lines) == 4
    assert re.fullmatch(STAMP + "api     creating builder", lines[0])
    assert re.fullmatch(STAMP + "api     extracted sha256:abababababab in 2.50s", lines[1])
    assert re.fullmatch(STAMP + r"worker  \[1/1\] FROM scratch", lines[2])
    assert re.fullmatch(STAMP + "api     succeeded in 30.0s on node-a", lines[3])


def test_plain_extract_time_is_per_image() -> None:
    out = io.StringIO()
    view = Plain(out)
    view.event("api", ev("extract_started", at=1.0))
    view.event("web", ev("extract_completed", at=3.5))
    assert out.getvalue().rstrip().endswith("extracted sha256:abababababab")


# --- Grouped -------------------------------------------------------------------------------------------


def test_github_groups_an_image_when_it_finishes() -> None:
    out = io.StringIO()
    view = Grouped(out, flavour="github")
    view.event("api", "creating builder")
    view.event("api", ev("vertex_started", "[1/2] FROM python"))
    assert re.fullmatch(STAMP + "api     creating builder\n", out.getvalue())  # milestones only, live
    view.event("api", succeeded())
    lines = out.getvalue().splitlines()[1:]
    assert lines[0] == "::group::build api (succeeded)"
    assert re.fullmatch(STAMP + "api     creating builder", lines[1])
    assert re.fullmatch(STAMP + r"api     \[1/2\] FROM python", lines[2])
    assert re.fullmatch(STAMP + "api     succeeded in 30.0s on node-a", lines[3])
    assert lines[4:] == ["::endgroup::", "api: succeeded in 30.0s on node-a"]


def test_github_error_annotation_points_at_the_dockerfile_line() -> None:
    out = io.StringIO()
    view = Grouped(out, flavour="github")
    view.event("api", ev("vertex_errored", "[2/2] RUN make", detail="exit code: 2"))
    view.event("api", failed())
    lines = out.getvalue().splitlines()
    assert lines[0] == "::group::build api (failed)"
    assert lines[3] == "::endgroup::"
    assert lines[4] == "::error file=services/api/Dockerfile,line=3,title=buildfan%3A api failed::exit code: 2%0Amore"
    assert lines[5] == "api: FAILED after 5.0s: exit code: 2"


def test_github_error_annotation_without_location_or_message() -> None:
    out = io.StringIO()
    Grouped(out, flavour="github").event("api", failed(error=None, line=None))
    assert "::error title=buildfan%3A api failed::build failed" in out.getvalue().splitlines()


def test_github_groups_do_not_mix_images() -> None:
    out = io.StringIO()
    view = Grouped(out, flavour="github")
    view.event("api", ev("vertex_started", "api step"))
    view.event("web", ev("vertex_started", "web step"))
    view.event("web", succeeded("web"))
    assert "api step" not in out.getvalue()
    view.event("api", succeeded("api"))
    group = out.getvalue().split("::group::build api")[1]
    assert "api step" in group and "web step" not in group


def test_gitlab_sections() -> None:
    out = io.StringIO()
    view = Grouped(out, flavour="gitlab")
    view.event("my api", ev("vertex_started", "[1/2] FROM python"))
    view.event("my api", succeeded("my api"))
    lines = out.getvalue().split("\n")
    start = re.fullmatch(
        r"\x1b\[0Ksection_start:(\d+):build_my_api\[collapsed=true\]\r\x1b\[0Kmy api: succeeded in 30.0s on node-a",
        lines[0],
    )
    assert start
    assert "FROM python" in lines[1]
    assert re.fullmatch(r"\x1b\[0Ksection_end:\d+:build_my_api\r\x1b\[0K", lines[3])
    assert lines[4] == "my api: succeeded in 30.0s on node-a"
    assert "::" not in out.getvalue()


def test_gitlab_failed_section_is_expanded() -> None:
    out = io.StringIO()
    Grouped(out, flavour="gitlab").event("api", failed())
    first = out.getvalue().split("\n")[0]
    assert "section_start:" in first and "[collapsed=true]" not in first


# --- Live ----------------------------------------------------------------------------------------------


class Clock:
    """A monotonic clock that advances one second per reading."""

    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        self.now += 1
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr("buildfan.console.time", fake)
    return fake


def test_live_draws_one_row_per_image(clock: Clock) -> None:
    out = Tty()
    view = Live(out, images=["api", "worker"])
    view.event("api", "creating builder")  # since = 101
    view.draw()  # now = 102
    rows = out.getvalue().split("\n")
    assert len(rows) == 3 and rows[-1] == ""
    assert rows[0] == "\x1b[2K  api     creating builder (1s)"
    assert rows[1].startswith("\x1b[2K  worker  waiting (")


def test_live_waiting_row_has_no_negative_time(clock: Clock) -> None:
    out = Tty()
    Live(out, images=["worker"]).draw()
    assert out.getvalue() == "\x1b[2K  worker  waiting (0s)\n"


def test_live_phases() -> None:
    view = Live(Tty(), images=["api"])
    phases = []
    for event in (
        ev("download_started"),
        ev("extract_started"),
        ev("vertex_started", "[2/2] RUN " + "x" * 100),
        ev("vertex_completed", "ignored"),
    ):
        view.event("api", event)
        phases.append(view.phase["api"])
    step = "[2/2] RUN " + "x" * 70  # cut at 80 characters
    assert phases == ["pulling base layers", "extracting sha256:abababababab", step, step]


def test_live_redraws_in_place_and_shows_results() -> None:
    out = Tty()
    view = Live(out, images=["api", "web"])
    view.draw()
    first = len(out.getvalue())
    view.event("api", succeeded())
    view.event("web", failed("web"))
    view.draw()
    second = out.getvalue()[first:]
    assert second.startswith("\x1b[2F")
    assert second[len("\x1b[2F") :].split("\n") == [
        "\x1b[2K  api     succeeded in 30.0s on node-a",
        "\x1b[2K  web     FAILED after 5.0s: exit code: 2",
        "",
    ]


def test_live_context_draws_the_final_table() -> None:
    out = Tty()
    with Live(out, images=["a-long-image-name"]) as view:
        view.event("a-long-image-name", succeeded("a-long-image-name"))
    assert out.getvalue().endswith("\x1b[2K  a-long-image-name  succeeded in 30.0s on node-a\n")
    assert not view.thread.is_alive()


# --- choose --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "tty", "view", "flavour"),
    [
        ({"GITHUB_ACTIONS": "true"}, True, Grouped, "github"),
        ({"GITHUB_ACTIONS": "true", "GITLAB_CI": "true"}, False, Grouped, "github"),
        ({"GITLAB_CI": "true"}, True, Grouped, "gitlab"),
        ({"GITHUB_ACTIONS": "false"}, True, Live, None),
        ({}, False, Plain, None),
    ],
)
def test_choose(env: dict[str, str], tty: bool, view: type[Plain], flavour: str | None) -> None:
    out = Tty() if tty else io.StringIO()
    chosen = choose(out, ["api"], env)
    assert type(chosen) is view
    assert chosen.out is out
    if flavour:
        assert isinstance(chosen, Grouped) and chosen.flavour == flavour
    if isinstance(chosen, Live):
        assert list(chosen.images) == ["api"]
