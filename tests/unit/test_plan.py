"""buildfan.plan: names, labels, driver-opts and the Deployment buildx would create (v0.36.1 parity)."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest

from buildfan.matrix import BuilderSpec, ImageSpec, Matrix, PlacementSpec, PodTemplate
from buildfan.plan import (
    IMAGE_LABEL,
    MANAGED_BY_LABEL,
    RUN_LABEL,
    BuilderPlan,
    builder_name,
    driver_opt_args,
    new_run_id,
    plan_builder,
    plan_builders,
)

RUN = "r1234567"
NO_PLACEMENT = PlacementSpec(spread=None)
PROBE = {
    "exec": {"command": ["buildctl", "debug", "workers"]},
    "initialDelaySeconds": 5,
    "timeoutSeconds": 60,
    "periodSeconds": 30,
    "successThreshold": 1,
    "failureThreshold": 3,
}


def image(name: str = "api", placement: PlacementSpec | None = None, /, **opts: str) -> ImageSpec:
    builder = BuilderSpec(driver_opts=tuple(opts.items()), placement=placement or PlacementSpec())
    return ImageSpec(name=name, context=Path("/src"), file=Path("/src/Dockerfile"), builder=builder)


def plan(name: str = "api", placement: PlacementSpec | None = None, /, **opts: str) -> BuilderPlan:
    return plan_builder(image(name, placement, **opts), RUN, "ci")


def manifest(**opts: str) -> dict[str, Any]:
    result = plan(**opts).manifest
    assert result is not None
    return result


def pod_spec(**opts: str) -> dict[str, Any]:
    spec: dict[str, Any] = manifest(**opts)["spec"]["template"]["spec"]
    return spec


def container(**opts: str) -> dict[str, Any]:
    result: dict[str, Any] = pod_spec(**opts)["containers"][0]
    return result


# --- names, labels, driver-opts ------------------------------------------------------------------------


def test_new_run_id_is_short_lowercase_and_random() -> None:
    ids = {new_run_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(re.fullmatch(r"[a-z0-9]{8}", i) for i in ids)


def test_names_follow_buildx() -> None:
    p = plan("api")
    assert p.image == "api"
    assert p.builder == f"buildfan-{RUN}-api"
    assert p.node == f"buildfan-{RUN}-api0"
    assert p.deployment == p.node
    assert p.namespace == "ci"


def test_long_names_are_truncated_with_a_hash() -> None:
    long_a, long_b = "a" * 60 + "-x", "a" * 60 + "-y"
    a, b = builder_name(RUN, long_a), builder_name(RUN, long_b)
    assert len(a) == 62 and len(a + "0") == 63
    assert a != b and a == builder_name(RUN, long_a)
    assert re.fullmatch(rf"buildfan-{RUN}-a+-[0-9a-f]{{6}}", a)
    assert builder_name(RUN, "a" * 44) == f"buildfan-{RUN}-{'a' * 44}"  # 62: still fits
    p = plan(long_a)
    assert len(dict(p.labels)[IMAGE_LABEL]) <= 63
    assert p.deployment == a + "0"


def test_labels() -> None:
    assert plan("web").labels == (
        (MANAGED_BY_LABEL, "buildfan"),
        (RUN_LABEL, RUN),
        (IMAGE_LABEL, "web"),
    )
    assert (MANAGED_BY_LABEL, RUN_LABEL, IMAGE_LABEL) == (
        "app.kubernetes.io/managed-by",
        "buildfan.dev/run",
        "buildfan.dev/image",
    )


def test_driver_opts_add_namespace_and_labels() -> None:
    p = plan(**{"requests.cpu": "1", "schedulername": "binpack"})
    assert p.driver_opts == (
        ("requests.cpu", "1"),
        ("schedulername", "binpack"),
        ("namespace", "ci"),
        ("labels", f"app.kubernetes.io/managed-by=buildfan,buildfan.dev/run={RUN},buildfan.dev/image=api"),
    )


def test_user_labels_are_merged_into_one_labels_opt() -> None:
    p = plan(labels="team=ci,tier=build", image="x")
    assert p.driver_opts[0] == ("image", "x")
    assert p.driver_opts[-1] == (
        "labels",
        f"team=ci,tier=build,app.kubernetes.io/managed-by=buildfan,buildfan.dev/run={RUN},buildfan.dev/image=api",
    )
    assert [k for k, _ in p.driver_opts].count("labels") == 1


def test_driver_opt_args_quote_commas_as_csv() -> None:
    p = plan(nodeselector="a=b,c=d", image='we"ird', **{"requests.cpu": "1"})
    args = driver_opt_args(p)
    assert args[0] == '"nodeselector=a=b,c=d"'
    assert args[1] == '"image=we""ird"'
    assert args[2] == "requests.cpu=1"
    assert args[3] == "namespace=ci"
    assert args[4].startswith('"labels=app.kubernetes.io/managed-by=buildfan,') and args[4].endswith('"')


def test_plan_builders_keeps_matrix_order() -> None:
    matrix = Matrix(Path("/m.yaml"), None, None, (image("b"), image("a")))
    plans = plan_builders(matrix, RUN, "ns1")
    assert [p.image for p in plans] == ["b", "a"]
    assert {p.namespace for p in plans} == {"ns1"}


def test_invalid_run_id() -> None:
    with pytest.raises(ValueError, match="invalid run id"):
        plan_builder(image(), "Not_Valid", "ci")


# --- when a Deployment is pre-created ------------------------------------------------------------------


def test_no_manifest_without_placement_or_template() -> None:
    assert plan("api", NO_PLACEMENT).manifest is None


def test_manifest_for_anti_affinity_only() -> None:
    assert plan("api", PlacementSpec(spread=None, anti_affinity="preferred")).manifest is not None


@pytest.mark.parametrize(
    "builder",
    [
        BuilderSpec(placement=NO_PLACEMENT, pod_template=PodTemplate("t.yaml", '{"spec": {}}')),
        BuilderSpec(placement=NO_PLACEMENT, pod_template_configmap="tmpl"),
    ],
)
def test_pod_template_needs_a_manifest_and_is_recorded(builder: BuilderSpec) -> None:
    spec = ImageSpec(name="api", context=Path("/c"), file=Path("/c/Dockerfile"), builder=builder)
    p = plan_builder(spec, RUN, "ci")
    assert p.manifest is not None
    assert "topologySpreadConstraints" not in p.manifest["spec"]["template"]["spec"]
    assert (p.pod_template, p.pod_template_configmap) == (
        builder.pod_template,
        builder.pod_template_configmap,
    )


# --- manifest parity with buildx v0.36.1 ---------------------------------------------------------------


def test_default_manifest_is_exactly_what_buildx_creates_plus_spreading() -> None:
    name = f"buildfan-{RUN}-api0"
    labels = {
        "app": name,
        "app.kubernetes.io/managed-by": "buildfan",
        "buildfan.dev/run": RUN,
        "buildfan.dev/image": "api",
    }
    assert manifest() == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"namespace": "ci", "name": name, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "buildkitd",
                            "image": "moby/buildkit:buildx-stable-1",
                            "args": ["--allow-insecure-entitlement=network.host"],
                            "securityContext": {"privileged": True},
                            "readinessProbe": PROBE,
                            "livenessProbe": PROBE,
                            "resources": {},
                        }
                    ],
                    "topologySpreadConstraints": [
                        {
                            "maxSkew": 1,
                            "topologyKey": "kubernetes.io/hostname",
                            "whenUnsatisfiable": "DoNotSchedule",
                            "labelSelector": {"matchLabels": {"buildfan.dev/run": RUN}},
                        }
                    ],
                },
            },
        },
    }


def test_user_labels_reach_metadata_selector_and_pods() -> None:
    m = manifest(labels="team=ci")
    for labels in (
        m["metadata"]["labels"],
        m["spec"]["selector"]["matchLabels"],
        m["spec"]["template"]["metadata"]["labels"],
    ):
        assert labels["team"] == "ci" and labels["app"] == m["metadata"]["name"]
        assert labels[RUN_LABEL] == RUN


def test_annotations_on_deployment_and_pods() -> None:
    m = manifest(annotations="a=b,example.com/c=d")
    assert m["metadata"]["annotations"] == {"a": "b", "example.com/c": "d"}
    assert m["spec"]["template"]["metadata"]["annotations"] == {"a": "b", "example.com/c": "d"}


def test_image_opt() -> None:
    assert container(image="registry.local/buildkit:v0.20")["image"] == "registry.local/buildkit:v0.20"
    assert container(image="")["image"] == "moby/buildkit:buildx-stable-1"


def test_rootless() -> None:
    m = manifest(rootless="true")
    c = m["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == "moby/buildkit:buildx-stable-1-rootless"
    assert c["args"] == ["--allow-insecure-entitlement=network.host", "--oci-worker-no-process-sandbox"]
    assert c["securityContext"] == {"seccompProfile": {"type": "Unconfined"}}
    assert c["volumeMounts"] == [{"name": "buildkitd", "mountPath": "/home/user/.local/share/buildkit"}]
    assert m["spec"]["template"]["spec"]["volumes"] == [{"name": "buildkitd", "emptyDir": {}}]
    apparmor = {"container.apparmor.security.beta.kubernetes.io/buildkitd": "unconfined"}
    assert m["spec"]["template"]["metadata"]["annotations"] == apparmor
    assert m["metadata"]["annotations"] == apparmor  # buildx shares one Go map between both


def test_rootless_image_quirks() -> None:
    assert container(rootless="1", image="my/bk:rootless")["image"] == "my/bk:rootless"
    assert container(rootless="True", image="")["image"] == "moby/buildkit:buildx-stable-1"  # key present
    assert container(rootless="false")["image"] == "moby/buildkit:buildx-stable-1"
    assert container(rootless="false")["securityContext"] == {"privileged": True}


def test_rootless_with_memory_volume() -> None:
    spec = pod_spec(rootless="true", **{"buildkit-root-volume-memory": "2Gi"})
    assert spec["volumes"] == [{"name": "buildkitd", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}}]
    assert spec["containers"][0]["volumeMounts"] == [
        {"name": "buildkitd", "mountPath": "/home/user/.local/share/buildkit"}
    ]


def test_root_volume_memory() -> None:
    spec = pod_spec(**{"buildkit-root-volume-memory": "1Gi"})
    assert spec["volumes"] == [{"name": "buildkit-memory", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}}]
    assert spec["containers"][0]["volumeMounts"] == [{"name": "buildkit-memory", "mountPath": "/var/lib/buildkit"}]


def test_resources_keep_upstream_quirk() -> None:
    c = container(
        **{
            "requests.cpu": "500m",
            "requests.memory": "1Gi",
            "requests.ephemeral-storage": "10Gi",
            "limits.cpu": "2",
            "limits.memory": "4Gi",
        }
    )
    assert c["resources"] == {
        "requests": {"cpu": "500m", "memory": "1Gi"},
        "limits": {"ephemeral-storage": "10Gi", "cpu": "2", "memory": "4Gi"},
    }
    both = {"requests.ephemeral-storage": "10Gi", "limits.ephemeral-storage": "20Gi"}
    assert container(**both)["resources"] == {"limits": {"ephemeral-storage": "20Gi"}}
    assert container(**{"requests.cpu": ""})["resources"] == {}


def test_qemu_init_container() -> None:
    spec = pod_spec(**{"qemu.install": "true"})
    assert spec["initContainers"] == [
        {
            "name": "qemu",
            "image": "tonistiigi/binfmt:latest",
            "args": ["--install", "all"],
            "securityContext": {"privileged": True},
            "resources": {},
        }
    ]
    assert pod_spec(**{"qemu.install": "true", "qemu.image": "my/binfmt"})["initContainers"][0]["image"] == "my/binfmt"
    assert "initContainers" not in pod_spec(**{"qemu.install": "false", "qemu.image": "my/binfmt"})
    rootless = pod_spec(**{"qemu.install": "t", "rootless": "true"})
    assert rootless["initContainers"][0]["securityContext"] == {"privileged": True}


def test_scheduling_opts() -> None:
    spec = pod_spec(
        nodeselector="kubernetes.io/arch=amd64,pool=ci",
        schedulername="binpack",
        serviceaccount="builder",
        tolerations="key=ci,operator=Equal,value=true,effect=NoSchedule;key=spot,operator=Exists,tolerationSeconds=30",
    )
    assert spec["nodeSelector"] == {"kubernetes.io/arch": "amd64", "pool": "ci"}
    assert spec["schedulerName"] == "binpack"
    assert spec["serviceAccountName"] == "builder"
    assert spec["tolerations"] == [
        {"key": "ci", "operator": "Equal", "value": "true", "effect": "NoSchedule"},
        {"key": "spot", "operator": "Exists", "tolerationSeconds": 30},
    ]


def test_empty_scheduler_opts_are_omitted() -> None:
    spec = pod_spec(schedulername="", serviceaccount="")
    assert "schedulerName" not in spec and "serviceAccountName" not in spec
    assert "nodeSelector" not in spec and "tolerations" not in spec


def test_env_opts() -> None:
    c = container(**{"env.GODEBUG": "x=1", "env.EMPTY": "", "requests.cpu": "1"})
    assert c["env"] == [{"name": "GODEBUG", "value": "x=1"}, {"name": "EMPTY"}]


def test_opts_without_manifest_effect() -> None:
    base = manifest()
    same = manifest(loadbalance="random", timeout="5m", **{"default-load": "true", "replicas": "1"})
    assert same == base


def test_probes_are_not_shared() -> None:
    m1, m2 = manifest(), manifest()
    m1["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["exec"]["command"].append("x")
    assert m2["spec"]["template"]["spec"]["containers"][0]["readinessProbe"] == PROBE
    assert manifest()["spec"]["template"]["spec"]["containers"][0]["livenessProbe"] == PROBE


# --- spreading -----------------------------------------------------------------------------------------


def placed_spec(placement: PlacementSpec) -> dict[str, Any]:
    m = plan("api", placement).manifest
    assert m is not None
    spec: dict[str, Any] = m["spec"]["template"]["spec"]
    return spec


def test_topology_spread() -> None:
    placement = PlacementSpec("topology.kubernetes.io/zone", 2, "ScheduleAnyway", None)
    spec = placed_spec(placement)
    assert spec["topologySpreadConstraints"] == [
        {
            "maxSkew": 2,
            "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": {"buildfan.dev/run": RUN}},
        }
    ]
    assert "affinity" not in spec


def test_preferred_anti_affinity_uses_spread_key() -> None:
    placement = PlacementSpec("topology.kubernetes.io/zone", 1, "DoNotSchedule", "preferred")
    spec = placed_spec(placement)
    assert spec["affinity"] == {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {
                        "labelSelector": {"matchLabels": {"buildfan.dev/run": RUN}},
                        "topologyKey": "topology.kubernetes.io/zone",
                    },
                }
            ]
        }
    }


def test_required_anti_affinity_without_spread_uses_hostname() -> None:
    placement = PlacementSpec(None, 1, "DoNotSchedule", "required")
    spec = placed_spec(placement)
    assert spec["affinity"] == {
        "podAntiAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {
                    "labelSelector": {"matchLabels": {"buildfan.dev/run": RUN}},
                    "topologyKey": "kubernetes.io/hostname",
                }
            ]
        }
    }
    assert "topologySpreadConstraints" not in spec


def test_spreading_does_not_change_buildx_fields() -> None:
    with_spread = copy.deepcopy(manifest(rootless="true"))
    without = plan("api", PlacementSpec(None, 1, "DoNotSchedule", "preferred"), rootless="true").manifest
    assert without is not None
    del with_spread["spec"]["template"]["spec"]["topologySpreadConstraints"]
    del without["spec"]["template"]["spec"]["affinity"]
    assert with_spread == without
