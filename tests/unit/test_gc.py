"""buildfan.gc: which labelled leftovers are old enough to remove, grouped by run."""

from __future__ import annotations

import datetime as dt

from buildfan.cluster import Resource
from buildfan.gc import runs_of, select
from buildfan.plan import MANAGED_BY_LABEL, RUN_LABEL

NOW = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)


def res(name: str, age: dt.timedelta | None, run: str | None = "r1", kind: str = "Deployment") -> Resource:
    labels = ((MANAGED_BY_LABEL, "buildfan"),) + (((RUN_LABEL, run),) if run else ())
    return Resource(kind, "ci", name, None if age is None else NOW - age, labels)


def test_select_everything_without_a_threshold() -> None:
    found = [res("a", HOUR), res("b", None), res("c", -HOUR)]
    assert select(found, None, NOW) == found


def test_select_returns_a_new_list() -> None:
    found = [res("a", HOUR)]
    assert select(found, None, NOW) is not found


def test_select_cutoff_is_inclusive() -> None:
    older, exact, younger = res("older", HOUR * 2), res("exact", HOUR), res("younger", HOUR - dt.timedelta(seconds=1))
    assert select([older, exact, younger], HOUR, NOW) == [older, exact]


def test_select_zero_threshold_takes_all_but_the_future() -> None:
    now, future = res("now", dt.timedelta(0)), res("future", -dt.timedelta(seconds=1))
    assert select([now, future], dt.timedelta(0), NOW) == [now]


def test_select_skips_resources_without_a_creation_time() -> None:
    assert select([res("unknown", None)], dt.timedelta(0), NOW) == []


def test_select_empty() -> None:
    assert select([], HOUR, NOW) == []


def test_runs_of_groups_by_run_label_in_order() -> None:
    a1, b1, a2 = res("a1", HOUR, "a"), res("b1", HOUR, "b", "ConfigMap"), res("a2", HOUR, "a", "PodTemplate")
    assert runs_of([a1, b1, a2]) == {"a": [a1, a2], "b": [b1]}


def test_runs_of_unlabelled_run_goes_under_question_mark() -> None:
    stray = res("stray", HOUR, run=None)
    assert runs_of([stray]) == {"?": [stray]}


def test_runs_of_empty_is_a_plain_dict() -> None:
    result = runs_of([])
    assert result == {} and type(result) is dict
