"""What to create for each image: builder names, driver-opts and the Deployment buildx will adopt.

Pure. The Deployment reproduces what buildx v0.36.1's kubernetes driver would create for the same
driver-opts (driver/kubernetes/factory.go + manifest/manifest.go, with the buildkitd flag `buildx create`
adds), plus buildfan's topologySpreadConstraints / podAntiAffinity.
"""

from __future__ import annotations

import copy
import hashlib
import re
import secrets
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from buildfan.matrix import ImageSpec, Matrix, PlacementSpec, PodTemplate, split_kv_list

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "buildfan"
RUN_LABEL = "buildfan.dev/run"
IMAGE_LABEL = "buildfan.dev/image"
APP_LABEL = "app"  # buildx's own label: app=<deployment>

BUILDX_IMAGE = "moby/buildkit:buildx-stable-1"
BUILDX_ROOTLESS_IMAGE = BUILDX_IMAGE + "-rootless"
BUILDX_QEMU_IMAGE = "tonistiigi/binfmt:latest"
# `buildx create` adds this when no --buildkitd-flags/config grants an entitlement (builder/builder.go).
BUILDKITD_FLAGS = ("--allow-insecure-entitlement=network.host",)
CONTAINER = "buildkitd"
HOSTNAME_KEY = "kubernetes.io/hostname"

_NAME_MAX = 63
_RUN_ID_RE = re.compile(r"[a-z0-9]{1,16}")
_RUN_ID_ALPHABET = string.ascii_lowercase + string.digits
_PROBE: dict[str, Any] = {
    "exec": {"command": ["buildctl", "debug", "workers"]},
    "initialDelaySeconds": 5,
    "timeoutSeconds": 60,
    "periodSeconds": 30,
    "successThreshold": 1,
    "failureThreshold": 3,
}
_GO_TRUE = ("1", "t", "T", "TRUE", "true", "True")

Pairs = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class BuilderPlan:
    """One image's builder: names, labels, `buildx create` driver-opts and the Deployment to pre-create."""

    image: str
    builder: str
    node: str
    deployment: str
    namespace: str
    labels: Pairs
    driver_opts: Pairs
    manifest: dict[str, Any] | None
    pod_template: PodTemplate | None = None
    pod_template_configmap: str | None = None


def new_run_id() -> str:
    """A short random run id: 8 characters of [a-z0-9]."""
    return "".join(secrets.choice(_RUN_ID_ALPHABET) for _ in range(8))


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:6]


def _fit(prefix: str, name: str, limit: int) -> str:
    """prefix + name, or prefix + truncated name + short hash when longer than limit."""
    if len(prefix) + len(name) <= limit:
        return prefix + name
    room = limit - len(prefix) - 7
    return f"{prefix}{name[:room].rstrip('-')}-{_short_hash(name)}"


def builder_name(run_id: str, image: str) -> str:
    """`buildfan-<run>-<image>`, short enough that the node name (+"0") fits in 63 characters."""
    return _fit(f"buildfan-{run_id}-", image, _NAME_MAX - 1)


def deployment_name(node: str) -> str:
    """The Deployment name buildx derives from a node name."""
    return node.lower().replace("_", "-")


def buildfan_labels(run_id: str, image: str) -> Pairs:
    """The labels buildfan puts on every builder it makes (selectors for spreading, gc and teardown)."""
    return (
        (MANAGED_BY_LABEL, MANAGED_BY_VALUE),
        (RUN_LABEL, run_id),
        (IMAGE_LABEL, _fit("", image, _NAME_MAX)),
    )


def _merged_driver_opts(user: Pairs, namespace: str, labels: Pairs) -> Pairs:
    """User opts, then namespace= and labels= (user labels followed by buildfan's)."""
    opts = dict(user)
    mine = (split_kv_list(opts.pop("labels")) or {}) if "labels" in opts else {}
    rendered = ",".join(f"{k}={v}" for k, v in {**mine, **dict(labels)}.items())
    return (*opts.items(), ("namespace", namespace), ("labels", rendered))


def _needs_manifest(image: ImageSpec) -> bool:
    spec = image.builder
    placement = spec.placement.spread is not None or spec.placement.anti_affinity is not None
    return placement or spec.pod_template is not None or spec.pod_template_configmap is not None


def _check_run_id(run_id: str) -> None:
    if not _RUN_ID_RE.fullmatch(run_id):
        raise ValueError(f"invalid run id {run_id!r}: expected 1-16 characters of [a-z0-9]")


def plan_builder(image: ImageSpec, run_id: str, namespace: str) -> BuilderPlan:
    """The plan for one image (see plan_builders)."""
    _check_run_id(run_id)
    builder = builder_name(run_id, image.name)
    node = builder + "0"
    labels = buildfan_labels(run_id, image.name)
    opts = _merged_driver_opts(image.builder.driver_opts, namespace, labels)
    deployment = deployment_name(node)
    manifest = _manifest(opts, deployment, image.builder.placement, run_id) if _needs_manifest(image) else None
    return BuilderPlan(
        image=image.name,
        builder=builder,
        node=node,
        deployment=deployment,
        namespace=namespace,
        labels=labels,
        driver_opts=opts,
        manifest=manifest,
        pod_template=image.builder.pod_template,
        pod_template_configmap=image.builder.pod_template_configmap,
    )


def plan_builders(matrix: Matrix, run_id: str, namespace: str) -> tuple[BuilderPlan, ...]:
    """One BuilderPlan per image, in matrix order; `namespace` is already resolved by the caller."""
    return tuple(plan_builder(image, run_id, namespace) for image in matrix.images)


def _csv_quote(field: str) -> str:
    if not any(c in field for c in ',"\r\n'):
        return field
    return '"' + field.replace('"', '""') + '"'


def driver_opt_args(plan: BuilderPlan) -> list[str]:
    """The `--driver-opt` values, CSV-quoted where needed (buildx parses each value as CSV)."""
    return [_csv_quote(f"{k}={v}") for k, v in plan.driver_opts]


# --- the Deployment, as buildx v0.36.1 builds it --------------------------------------------------------


def _is_true(opts: Mapping[str, str], key: str) -> bool:
    return opts.get(key) in _GO_TRUE


def _container_image(opts: Mapping[str, str]) -> str:
    """`image=` wins when non-empty; rootless switches the default only when `image` is absent."""
    if opts.get("image"):
        return opts["image"]
    return BUILDX_ROOTLESS_IMAGE if _is_true(opts, "rootless") and "image" not in opts else BUILDX_IMAGE


def _resources(opts: Mapping[str, str]) -> dict[str, Any]:
    """Upstream quirk kept: requests.ephemeral-storage lands in *limits* (limits.ephemeral-storage wins)."""
    requests = {r: opts[f"requests.{r}"] for r in ("cpu", "memory") if opts.get(f"requests.{r}")}
    sources = ("requests.ephemeral-storage", "limits.cpu", "limits.memory", "limits.ephemeral-storage")
    limits = {key.split(".")[1]: opts[key] for key in sources if opts.get(key)}
    return {k: v for k, v in (("limits", limits), ("requests", requests)) if v}


def _env(opts: Mapping[str, str]) -> list[dict[str, str]]:
    pairs = [(k.removeprefix("env."), v) for k, v in opts.items() if k.startswith("env.")]
    return [{"name": name, "value": value} if value else {"name": name} for name, value in pairs]


def _root_volume(opts: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(volume, mount) for the buildkit state dir: rootless emptyDir, or buildkit-root-volume-memory."""
    memory = opts.get("buildkit-root-volume-memory", "")
    empty_dir = {"medium": "Memory", "sizeLimit": memory} if memory else {}
    if _is_true(opts, "rootless"):
        mount = {"name": "buildkitd", "mountPath": "/home/user/.local/share/buildkit"}
        return {"name": "buildkitd", "emptyDir": empty_dir}, mount
    if memory:
        mount = {"name": "buildkit-memory", "mountPath": "/var/lib/buildkit"}
        return {"name": "buildkit-memory", "emptyDir": empty_dir}, mount
    return None


def _security(opts: Mapping[str, str]) -> dict[str, Any]:
    if _is_true(opts, "rootless"):
        return {"seccompProfile": {"type": "Unconfined"}}
    return {"privileged": True}


def _container(opts: Mapping[str, str]) -> dict[str, Any]:
    rootless = ["--oci-worker-no-process-sandbox"] if _is_true(opts, "rootless") else []
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": _container_image(opts),
        "args": [*BUILDKITD_FLAGS, *rootless],
        "securityContext": _security(opts),
        "readinessProbe": copy.deepcopy(_PROBE),
        "livenessProbe": copy.deepcopy(_PROBE),
        "resources": _resources(opts),
    }
    volume = _root_volume(opts)
    if volume:
        container["volumeMounts"] = [volume[1]]
    env = _env(opts)
    if env:
        container["env"] = env
    return container


def _qemu(opts: Mapping[str, str]) -> dict[str, Any]:
    return {
        "name": "qemu",
        "image": opts.get("qemu.image") or BUILDX_QEMU_IMAGE,
        "args": ["--install", "all"],
        "securityContext": {"privileged": True},
        "resources": {},
    }


def _toleration(item: str) -> dict[str, Any]:
    """One `key=..,operator=..` toleration; like buildx, fields that are not exactly k=v are ignored."""
    fields = [f.split("=") for f in item.split(",")]
    result: dict[str, Any] = {k: v for k, v in (f for f in fields if len(f) == 2) if v}
    if "tolerationSeconds" in result:
        result["tolerationSeconds"] = int(result["tolerationSeconds"])
    return result


def _annotations(opts: Mapping[str, str]) -> dict[str, str]:
    """Custom annotations, plus rootless's AppArmor one (a shared Go map: on the Deployment too)."""
    annotations = (split_kv_list(opts["annotations"]) or {}) if "annotations" in opts else {}
    if _is_true(opts, "rootless"):
        annotations[f"container.apparmor.security.beta.kubernetes.io/{CONTAINER}"] = "unconfined"
    return annotations


def _scheduling(opts: Mapping[str, str]) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if opts.get("serviceaccount"):
        spec["serviceAccountName"] = opts["serviceaccount"]
    if opts.get("schedulername"):
        spec["schedulerName"] = opts["schedulername"]
    if "nodeselector" in opts:
        spec["nodeSelector"] = split_kv_list(opts["nodeselector"])
    if "tolerations" in opts:
        spec["tolerations"] = [_toleration(t) for t in opts["tolerations"].split(";")]
    return spec


def _pod_spec(opts: Mapping[str, str]) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [_container(opts)], **_scheduling(opts)}
    if _is_true(opts, "qemu.install"):
        spec["initContainers"] = [_qemu(opts)]
    volume = _root_volume(opts)
    if volume:
        spec["volumes"] = [volume[0]]
    return spec


def _selector(run_id: str) -> dict[str, Any]:
    return {"matchLabels": {RUN_LABEL: run_id}}


def _spread(placement: PlacementSpec, run_id: str) -> dict[str, Any]:
    """buildfan's additions: topologySpreadConstraints and podAntiAffinity across this run's builders."""
    spec: dict[str, Any] = {}
    if placement.spread is not None:
        constraint = {
            "maxSkew": placement.max_skew,
            "topologyKey": placement.spread,
            "whenUnsatisfiable": placement.when_unsatisfiable,
            "labelSelector": _selector(run_id),
        }
        spec["topologySpreadConstraints"] = [constraint]
    if placement.anti_affinity is not None:
        spec["affinity"] = {"podAntiAffinity": _anti_affinity(placement, run_id)}
    return spec


def _anti_affinity(placement: PlacementSpec, run_id: str) -> dict[str, Any]:
    term = {"labelSelector": _selector(run_id), "topologyKey": placement.spread or HOSTNAME_KEY}
    if placement.anti_affinity == "required":
        return {"requiredDuringSchedulingIgnoredDuringExecution": [term]}
    weighted = {"weight": 100, "podAffinityTerm": term}
    return {"preferredDuringSchedulingIgnoredDuringExecution": [weighted]}


def _metadata(labels: dict[str, str], annotations: dict[str, str], **extra: str) -> dict[str, Any]:
    meta: dict[str, Any] = {**extra, "labels": dict(labels)}
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def buildx_labels(opts: Mapping[str, str], deployment: str) -> dict[str, str]:
    """buildx's label map: app=<deployment> plus `labels=`; metadata, selector and pod labels alike."""
    return {APP_LABEL: deployment, **(split_kv_list(opts.get("labels", "")) or {})}


def _manifest(opts_pairs: Pairs, deployment: str, placement: PlacementSpec, run_id: str) -> dict[str, Any]:
    opts = dict(opts_pairs)
    labels, annotations = buildx_labels(opts, deployment), _annotations(opts)
    template = {
        "metadata": _metadata(labels, annotations),
        "spec": {**_pod_spec(opts), **_spread(placement, run_id)},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(labels, annotations, namespace=opts["namespace"], name=deployment),
        "spec": {"replicas": 1, "selector": {"matchLabels": dict(labels)}, "template": template},
    }
