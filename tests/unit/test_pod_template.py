"""buildfan.pod_template: what a merged pod template may not change, and applying a template to a plan.

The fake API server below does a naive merge; the real strategic merge is exercised by tests/cluster.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from buildfan.errors import UserError
from buildfan.matrix import BuilderSpec, ImageSpec, PodTemplate
from buildfan.plan import APP_LABEL, IMAGE_LABEL, RUN_LABEL, BuilderPlan, plan_builder
from buildfan.pod_template import apply_template, check_protected

MATRIX = Path("/src/matrix.yaml")
SOURCE = "pod.yaml"


def plan(template: dict[str, Any] | None = None, configmap: str | None = None) -> BuilderPlan:
    pod_template = None if template is None else PodTemplate("/src/pod.yaml", json.dumps(template))
    builder = BuilderSpec(pod_template=pod_template, pod_template_configmap=configmap)
    image = ImageSpec("api", Path("/src"), Path("/src/Dockerfile"), builder=builder)
    return plan_builder(image, "r1234567", "ci")


def base() -> dict[str, Any]:
    manifest = plan().manifest
    assert manifest is not None
    return copy.deepcopy(manifest["spec"]["template"])


def buildkitd(template: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = template["spec"]["containers"][0]
    assert container["name"] == "buildkitd"
    return container


class FakeApiServer:
    """read_template_configmap returns a stored template; merge_pod_template is a naive update that
    merges labels and pod spec fields, and containers by name."""

    def __init__(self, configmap: dict[str, Any] | None = None) -> None:
        self.configmap = configmap
        self.calls: list[tuple[Any, ...]] = []

    def read_template_configmap(self, namespace: str, name: str) -> dict[str, Any]:
        self.calls.append(("read", namespace, name))
        assert self.configmap is not None
        return copy.deepcopy(self.configmap)

    def merge_pod_template(
        self, namespace: str, base: dict[str, Any], patch: dict[str, Any], labels: dict[str, str], source: str
    ) -> dict[str, Any]:
        self.calls.append(("merge", namespace, labels, source))
        merged = copy.deepcopy(base)
        merged["metadata"]["labels"].update(patch.get("metadata", {}).get("labels", {}))
        spec = dict(patch.get("spec", {}))
        by_name = {c["name"]: c for c in merged["spec"]["containers"]}
        for c in spec.pop("containers", []):
            by_name.setdefault(c["name"], {}).update(c)
        merged["spec"] |= spec | {"containers": list(by_name.values())}
        return merged


# --- check_protected -----------------------------------------------------------------------------------


def test_unchanged_and_harmless_changes_are_fine() -> None:
    merged = base()
    merged["metadata"]["labels"]["team"] = "ci"
    merged["spec"]["nodeSelector"] = {"pool": "builders"}
    buildkitd(merged)["env"] = [{"name": "X", "value": "1"}]
    buildkitd(merged)["resources"] = {"limits": {"memory": "4Gi"}}
    merged["spec"]["containers"].append({"name": "sidecar", "image": "busybox"})
    check_protected(base(), merged, SOURCE)
    check_protected(base(), base(), SOURCE)


@pytest.mark.parametrize(("key", "value"), [("image", "evil:latest"), ("command", ["sh"]), ("args", ["--debug"])])
def test_buildkitd_container_fields_are_protected(key: str, value: Any) -> None:
    merged = base()
    buildkitd(merged)[key] = value
    with pytest.raises(UserError, match=rf"^pod.yaml: must not change the buildkitd container's {key}; "):
        check_protected(base(), merged, SOURCE)


def test_removing_args_is_a_change() -> None:
    merged = base()
    del buildkitd(merged)["args"]
    with pytest.raises(UserError, match="container's args"):
        check_protected(base(), merged, SOURCE)


@pytest.mark.parametrize("containers", [[], [{"name": "sidecar", "image": "busybox"}]])
def test_removing_the_buildkitd_container_is_refused(containers: list[dict[str, Any]]) -> None:
    merged = base()
    merged["spec"]["containers"] = containers
    with pytest.raises(UserError, match=r"^pod.yaml: the merge removed the buildkitd container"):
        check_protected(base(), merged, SOURCE)


def test_app_label_is_protected() -> None:
    merged = base()
    merged["metadata"]["labels"][APP_LABEL] = "other"
    with pytest.raises(UserError, match=r"must not change the `app` label"):
        check_protected(base(), merged, SOURCE)


@pytest.mark.parametrize("change", ["modify", "remove"])
@pytest.mark.parametrize("label", [RUN_LABEL, IMAGE_LABEL])
def test_buildfan_labels_are_protected(label: str, change: str) -> None:
    merged = base()
    if change == "remove":
        del merged["metadata"]["labels"][label]
    else:
        merged["metadata"]["labels"][label] = "other"
    with pytest.raises(UserError, match=r"must not change buildfan's labels"):
        check_protected(base(), merged, SOURCE)


# --- apply_template ------------------------------------------------------------------------------------


def test_no_template_leaves_the_plan_alone() -> None:
    server = FakeApiServer()
    p = plan()
    assert apply_template(p, server, MATRIX) is p
    assert server.calls == []


def test_file_template_is_merged_into_a_copy() -> None:
    template = {"metadata": {"labels": {"team": "ci"}}, "spec": {"nodeSelector": {"pool": "builders"}}}
    p = plan(template)
    before = copy.deepcopy(p.manifest)
    server = FakeApiServer()
    merged = apply_template(p, server, MATRIX)
    assert server.calls == [("merge", "ci", dict(p.labels), "/src/pod.yaml")]
    assert p.manifest == before  # the input plan is not modified
    assert merged.manifest is not None
    pod = merged.manifest["spec"]["template"]
    assert pod["spec"]["nodeSelector"] == {"pool": "builders"}
    assert pod["metadata"]["labels"]["team"] == "ci"
    assert merged.manifest["spec"]["selector"] == before["spec"]["selector"]  # type: ignore[index]
    assert (merged.builder, merged.driver_opts) == (p.builder, p.driver_opts)


def test_configmap_template_is_read_then_merged() -> None:
    server = FakeApiServer({"spec": {"containers": [{"name": "buildkitd", "env": [{"name": "X", "value": "1"}]}]}})
    merged = apply_template(plan(configmap="tmpl"), server, MATRIX)
    source = "ConfigMap ci/tmpl key `template`"
    assert server.calls[0] == ("read", "ci", "tmpl")
    assert server.calls[1][0::3] == ("merge", source)
    assert merged.manifest is not None
    assert buildkitd(merged.manifest["spec"]["template"])["env"] == [{"name": "X", "value": "1"}]


def test_configmap_pod_spec_is_wrapped() -> None:
    server = FakeApiServer({"nodeSelector": {"pool": "builders"}})  # a bare PodSpec
    merged = apply_template(plan(configmap="tmpl"), server, MATRIX)
    assert merged.manifest is not None
    assert merged.manifest["spec"]["template"]["spec"]["nodeSelector"] == {"pool": "builders"}


def test_configmap_template_is_validated_before_merging() -> None:
    server = FakeApiServer({"spec": {"containers": [{"name": "buildkitd", "image": "evil"}]}})
    with pytest.raises(UserError, match=r"^ConfigMap ci/tmpl key `template`: .*image"):
        apply_template(plan(configmap="tmpl"), server, MATRIX)
    assert [c[0] for c in server.calls] == ["read"]


def test_merge_result_is_checked() -> None:
    class Rogue(FakeApiServer):
        def merge_pod_template(self, *args: Any) -> dict[str, Any]:
            merged = super().merge_pod_template(*args)
            merged["metadata"]["labels"][APP_LABEL] = "other"
            return merged

    with pytest.raises(UserError, match=r"^/src/pod.yaml: must not change the `app` label"):
        apply_template(plan({"spec": {}}), Rogue(), MATRIX)
