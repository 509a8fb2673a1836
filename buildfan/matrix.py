"""Load matrix.yaml into frozen dataclasses: validation happens here, once.

Every problem is a one-line `UserError`: `<matrix path>: <key path>: <what is wrong>; <what to do>`.
Reading the matrix file and the pod template files is the only I/O.
"""

from __future__ import annotations

import csv
import itertools
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

import yaml

from buildfan.errors import UserError

DEFAULT_SPREAD = "kubernetes.io/hostname"
WHEN_UNSATISFIABLE = ("DoNotSchedule", "ScheduleAnyway")
ANTI_AFFINITY = ("preferred", "required")
BUILDKITD_CONTAINER = "buildkitd"
# Label keys nobody but buildx/buildfan may set (buildfan.plan uses the same keys).
RESERVED_LABELS = ("app", "app.kubernetes.io/managed-by")
RESERVED_LABEL_PREFIX = "buildfan.dev/"

_TOP_KEYS = ("namespace", "jobs", "builder", "images", "matrix")
_BUILDER_KEYS = ("driver-opts", "placement", "pod-template", "pod-template-configmap")
_PLACEMENT_KEYS = {
    "spread": "spread",
    "max-skew": "max_skew",
    "when-unsatisfiable": "when_unsatisfiable",
    "anti-affinity": "anti_affinity",
}
_IMAGE_KEYS = (
    "name",
    "context",
    "file",
    "target",
    "tags",
    "build-args",
    "platforms",
    "output",
    "cache-from",
    "cache-to",
    "secrets",
    "labels",
    "builder",
)
_SUBSTITUTED = (
    "context",
    "file",
    "target",
    "tags",
    "build-args",
    "output",
    "cache-from",
    "cache-to",
    "labels",
)
_NAME_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_NAME_MAX = 40
_AXIS_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_MATRIX_REF = re.compile(r"\$\{\{\s*matrix\.([A-Za-z0-9_-]+)\s*\}\}")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_LABEL_KEY = re.compile(rf"({_DNS_SUBDOMAIN.pattern}/)?{_LABEL_NAME}")
_LABEL_VALUE = re.compile(rf"({_LABEL_NAME})?")
_QUANTITY = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+|[numkMGTPE]|[KMGTPE]i)?")
_DURATION = re.compile(r"[+-]?(0|(([0-9]+(\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h))+)")
_GO_BOOLS = ("1", "t", "T", "TRUE", "true", "True", "0", "f", "F", "FALSE", "false", "False")
_POD_SPEC_TEXT = (
    "activeDeadlineSeconds affinity automountServiceAccountToken containers dnsConfig dnsPolicy "
    "enableServiceLinks ephemeralContainers hostAliases hostIPC hostNetwork hostPID hostUsers "
    "hostname hostnameOverride imagePullSecrets initContainers nodeName nodeSelector os overhead "
    "preemptionPolicy priority priorityClassName readinessGates resourceClaims resources "
    "restartPolicy runtimeClassName schedulerName schedulingGates securityContext serviceAccount "
    "serviceAccountName setHostnameAsFQDN shareProcessNamespace subdomain "
    "terminationGracePeriodSeconds tolerations topologySpreadConstraints volumes workloadRef"
)
_POD_SPEC_FIELDS = frozenset(_POD_SPEC_TEXT.split())

Pairs = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class PlacementSpec:
    """How a builder's pod is spread: `spread` is a topology key, or None for no spreading."""

    spread: str | None = DEFAULT_SPREAD
    max_skew: int = 1
    when_unsatisfiable: str = "DoNotSchedule"
    anti_affinity: str | None = None


@dataclass(frozen=True)
class PodTemplate:
    """A validated partial PodTemplateSpec (`{metadata?, spec?}`), kept as canonical JSON text."""

    source: str
    json_text: str

    def as_dict(self) -> dict[str, Any]:
        """A fresh, mutable copy of the template."""
        result: dict[str, Any] = json.loads(self.json_text)
        return result


@dataclass(frozen=True)
class BuilderSpec:
    """What goes into one image's builder: driver-opts, placement and an optional pod template."""

    driver_opts: Pairs = ()
    placement: PlacementSpec = PlacementSpec()
    pod_template: PodTemplate | None = None
    pod_template_configmap: str | None = None


@dataclass(frozen=True)
class ImageSpec:
    """One image to build (one matrix combination); paths are absolute."""

    name: str
    context: Path
    file: Path
    target: str | None = None
    tags: tuple[str, ...] = ()
    build_args: Pairs = ()
    platforms: tuple[str, ...] = ()
    output: str = "none"
    cache_from: tuple[str, ...] = ()
    cache_to: tuple[str, ...] = ()
    secrets: tuple[str, ...] = ()
    labels: Pairs = ()
    builder: BuilderSpec = BuilderSpec()
    matrix_values: Pairs = ()


@dataclass(frozen=True)
class Matrix:
    """The whole matrix file, expanded: one ImageSpec per combination."""

    path: Path
    namespace: str | None
    jobs: int | None
    images: tuple[ImageSpec, ...]


# --- error locations ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Where:
    """A key path inside a file, for error messages."""

    src: str
    key: str = ""

    def sub(self, name: str) -> _Where:
        return _Where(self.src, f"{self.key}.{name}" if self.key else name)

    def at(self, index: int | str) -> _Where:
        return _Where(self.src, f"{self.key}[{index}]")

    def fail(self, what: str, todo: str) -> NoReturn:
        raise UserError(f"{self.src}: {self.key or '(top level)'}: {what}; {todo}")


# --- YAML --------------------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys."""


def _no_duplicates(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: list[object] = []
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.append(key)
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def _yaml_problem(e: yaml.YAMLError) -> tuple[str, str]:
    """(`line N`, problem) for a YAML error."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    problem = getattr(e, "problem", None) or str(e)
    return (f"line {mark.line + 1}" if mark else "somewhere"), problem


def _load_yaml(path: Path, where: _Where, display: str) -> tuple[object, tuple[str, str] | None]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        where.fail(f"cannot read {display}: {e.strerror}", "check the path")
    try:
        return yaml.load(text, Loader=_StrictLoader), None
    except yaml.YAMLError as e:
        return None, _yaml_problem(e)


def _read_matrix_yaml(path: Path) -> object:
    doc, problem = _load_yaml(path, _Where(str(path)), str(path))
    if problem:
        _Where(str(path), problem[0]).fail(f"invalid YAML: {problem[1]}", "fix the YAML syntax")
    return doc


def _read_template_yaml(path: Path, where: _Where, display: str) -> object:
    doc, problem = _load_yaml(path, where, display)
    if problem:
        where.fail(f"{display} {problem[0]}: invalid YAML: {problem[1]}", "fix the pod template's YAML syntax")
    return doc


# --- scalar and container checks ---------------------------------------------------------------------


def _kind(value: object) -> str:
    return "nothing" if value is None else type(value).__name__


def _mapping(value: object, where: _Where) -> dict[str, object]:
    if not isinstance(value, dict):
        where.fail(f"expected a mapping, got {_kind(value)}", "write `key: value` pairs")
    for key in value:
        if not isinstance(key, str):
            where.fail(f"key {key!r} is not a string", "quote the key")
    return value


def _check_keys(mapping: Mapping[str, object], allowed: Iterable[str], where: _Where) -> None:
    known = list(allowed)
    for key in mapping:
        if key not in known:
            where.sub(key).fail("unknown key", f"use one of: {', '.join(known)}")


def _string(value: object, where: _Where) -> str:
    if not isinstance(value, str) or not value:
        where.fail(f"expected a non-empty string, got {_kind(value)}", "write a string")
    return value


def _scalar(value: object, where: _Where) -> str:
    """A YAML scalar as a string: booleans become `true`/`false`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    where.fail(f"expected a scalar (string, number or boolean), got {_kind(value)}", "write a single value")


def _positive_int(value: object, where: _Where) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        where.fail(f"expected a positive integer, got {value!r}", "write a whole number >= 1")
    return value


def _choice(value: object, choices: Iterable[str], where: _Where) -> str:
    options = list(choices)
    if value not in options:
        where.fail(f"invalid value {value!r}", f"use one of: {', '.join(options)}")
    return str(value)


def _string_list(value: object, where: _Where) -> tuple[str, ...]:
    if not isinstance(value, list):
        where.fail(f"expected a list, got {_kind(value)}", "write a YAML list")
    return tuple(_string(item, where.at(i)) for i, item in enumerate(value))


def _string_map(value: object, where: _Where) -> Pairs:
    mapping = _mapping(value, where)
    return tuple((k, _scalar(v, where.sub(k))) for k, v in mapping.items())


def _optional(mapping: Mapping[str, object], key: str, parse: Callable[[object, _Where], Any], where: _Where) -> Any:
    return parse(mapping[key], where.sub(key)) if mapping.get(key) is not None else None


# --- driver-opts -------------------------------------------------------------------------------------

_Problem = tuple[str, str] | None


def _ok(_value: str) -> _Problem:
    return None


def _go_bool(value: str) -> _Problem:
    return None if value in _GO_BOOLS else (f"{value!r} is not a boolean", "write true or false")


def _quantity(value: str) -> _Problem:
    if value == "" or _QUANTITY.fullmatch(value):
        return None
    return f"{value!r} is not a Kubernetes quantity", "write e.g. 500m, 2 or 4Gi"


def _duration(value: str) -> _Problem:
    return None if _DURATION.fullmatch(value) else (f"{value!r} is not a Go duration", "write e.g. 120s or 5m")


def _replicas(value: str) -> _Problem:
    return None if value == "1" else (f"replicas={value}", "buildfan runs one pod per builder; remove it")


def _namespace_opt(_value: str) -> _Problem:
    return "namespace is managed by buildfan", "use the top-level `namespace:` key instead"


def _pvc_opt(_value: str) -> _Problem:
    return (
        "makes buildx use a StatefulSet, which buildfan does not pre-create",
        "remove it (builders are per run, so a persistent volume would not be reused)",
    )


def _loadbalance(value: str) -> _Problem:
    return None if value in ("sticky", "random") else (f"invalid loadbalance {value!r}", "use sticky or random")


def split_kv_list(value: str) -> dict[str, str] | None:
    """buildx's `k=v,k2=v2` parser (surrounding quotes trimmed); None when it would fail."""
    result: dict[str, str] = {}
    for item in value.strip('"').split(","):
        parts = item.split("=")
        if len(parts) != 2:
            return None
        result[parts[0]] = parts[1]
    return result


def _kv_problem(value: str, check_key: Callable[[str], _Problem]) -> _Problem:
    pairs = split_kv_list(value)
    if pairs is None:
        return f"{value!r} is not a k=v,k2=v2 list", "write comma-separated key=value pairs without extra '='"
    return next(filter(None, map(check_key, pairs)), None)


def _label_key(key: str) -> _Problem:
    if not _LABEL_KEY.fullmatch(key):
        return f"invalid label key {key!r}", "use a Kubernetes label key such as example.com/team"
    return None


def _label(key: str, value: str) -> _Problem:
    if key in RESERVED_LABELS or key.startswith(RESERVED_LABEL_PREFIX):
        return f"label {key!r} is reserved", "remove it; buildx and buildfan set it"
    if not _LABEL_VALUE.fullmatch(value):
        return f"invalid label value {value!r}", "use at most 63 letters, digits, '-', '_' or '.'"
    return _label_key(key)


def _labels_opt(value: str) -> _Problem:
    pairs = split_kv_list(value)
    if pairs is None:
        return _kv_problem(value, _label_key)
    return next(filter(None, (_label(k, v) for k, v in pairs.items())), None)


def _annotation_key(key: str) -> _Problem:
    if key == "buildx.docker.com/platform":
        return f"annotation {key!r} is reserved", "remove it; buildx sets it"
    return None


_TOLERATION_OPS = ("Exists", "Equal")
_TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


def _toleration_field(field: str) -> _Problem:
    key, _, value = field.partition("=")
    if "=" not in field or "=" in value:
        return f"toleration field {field!r} is not key=value", "write e.g. key=k,operator=Equal,value=v"
    checks: dict[str, Callable[[], bool]] = {
        "key": lambda: True,
        "value": lambda: True,
        "operator": lambda: value in _TOLERATION_OPS,
        "effect": lambda: value in ("", *_TAINT_EFFECTS),
        "tolerationSeconds": lambda: re.fullmatch(r"[+-]?[0-9]+", value) is not None,
    }
    if key not in checks:
        return f"unknown toleration field {key!r}", f"use {', '.join(checks)}"
    return None if checks[key]() else (f"invalid toleration {field!r}", "check operator/effect/seconds")


def _tolerations(value: str) -> _Problem:
    for item in value.split(";"):
        if not item:
            return "empty toleration", "separate tolerations with ';' and drop empty entries"
        problem = next(filter(None, map(_toleration_field, item.split(","))), None)
        if problem:
            return problem
    return None


_DRIVER_OPTS: dict[str, Callable[[str], _Problem]] = {
    "image": _ok,
    "namespace": _namespace_opt,
    "replicas": _replicas,
    "requests.cpu": _quantity,
    "requests.memory": _quantity,
    "requests.ephemeral-storage": _quantity,
    "persistent-volume-claim.requests.storage": _pvc_opt,
    "limits.cpu": _quantity,
    "limits.memory": _quantity,
    "limits.ephemeral-storage": _quantity,
    "rootless": _go_bool,
    "schedulername": _ok,
    "serviceaccount": _ok,
    "nodeselector": lambda v: _kv_problem(v, _label_key),
    "annotations": lambda v: _kv_problem(v, _annotation_key),
    "labels": _labels_opt,
    "tolerations": _tolerations,
    "loadbalance": _loadbalance,
    "qemu.install": _go_bool,
    "qemu.image": _ok,
    "buildkit-root-volume-memory": _quantity,
    "default-load": _go_bool,
    "timeout": _duration,
}


def _env_opt(key: str) -> Callable[[str], _Problem] | None:
    name = key.removeprefix("env.")
    if not key.startswith("env.") or not name or "=" in name:
        return None
    return _ok


def _driver_opt(key: str, raw: object, where: _Where) -> str:
    value = _scalar(raw, where)
    check = _DRIVER_OPTS.get(key) or _env_opt(key)
    if check is None:
        where.fail(
            "unknown kubernetes driver-opt (buildx v0.36.1)",
            f"use one of: {', '.join(_DRIVER_OPTS)}, env.<NAME>",
        )
    problem = check(value)
    if problem:
        where.fail(*problem)
    return value


def _driver_opts(value: object, where: _Where) -> dict[str, str]:
    mapping = _mapping(value, where)
    return {k: _driver_opt(k, v, where.sub(k)) for k, v in mapping.items()}


# --- placement ---------------------------------------------------------------------------------------


def _spread(value: object, where: _Where) -> str | None:
    key = _string(value, where)
    if key == "none":
        return None
    if not _LABEL_KEY.fullmatch(key):
        where.fail(f"invalid topology key {key!r}", "use a node label key such as topology.kubernetes.io/zone")
    return key


def _placement_field(key: str, value: object, where: _Where) -> Any:
    if key == "spread":
        return _spread(value, where)
    if key == "max-skew":
        return _positive_int(value, where)
    if key == "when-unsatisfiable":
        return _choice(value, WHEN_UNSATISFIABLE, where)
    return None if value in (None, "none") else _choice(value, ANTI_AFFINITY, where)


def _placement(value: object, where: _Where) -> dict[str, Any]:
    mapping = _mapping(value, where)
    _check_keys(mapping, _PLACEMENT_KEYS, where)
    return {_PLACEMENT_KEYS[k]: _placement_field(k, v, where.sub(k)) for k, v in mapping.items()}


# --- pod template ------------------------------------------------------------------------------------


def _template_root(doc: object, where: _Where) -> dict[str, object]:
    """Accept a PodTemplateSpec (`metadata`/`spec`) or a bare PodSpec, which gets wrapped in `spec`."""
    mapping = _mapping(doc, where)
    keys = set(mapping)
    if keys <= {"metadata", "spec"}:
        return mapping
    if keys & {"metadata", "spec"}:
        where.fail("mixes PodTemplateSpec keys (metadata/spec) with PodSpec keys", "nest pod fields under spec")
    for key in sorted(keys - _POD_SPEC_FIELDS):
        where.sub(key).fail("not a PodSpec field", "write a PodTemplateSpec (metadata/spec) or a PodSpec")
    return {"spec": mapping}


def _no_patch_directive(mapping: Mapping[str, object], where: _Where) -> None:
    if "$patch" in mapping:
        where.sub("$patch").fail("patch directives here could drop what buildx needs", "remove it")


def _template_metadata(value: object, where: _Where) -> None:
    meta = _mapping(value, where)
    _check_keys(meta, ("labels", "annotations"), where)
    labels = _mapping(meta.get("labels") or {}, where.sub("labels"))
    for key in labels:
        if key in RESERVED_LABELS or key.startswith(RESERVED_LABEL_PREFIX):
            where.sub("labels").sub(key).fail("label is reserved for buildx/buildfan", "remove it")


def _template_container(value: object, where: _Where) -> None:
    container = _mapping(value, where)
    _no_patch_directive(container, where)
    if not isinstance(container.get("name"), str):
        where.fail("container without a name", "give every container a `name` (the merge key)")
    if container["name"] != BUILDKITD_CONTAINER:
        return
    for key in ("image", "command", "args"):
        if key in container:
            where.sub(key).fail(f"must not change the buildkitd container's {key}", "use driver-opts (image=)")


def _container_list(spec: Mapping[str, object], key: str, where: _Where) -> None:
    items = spec.get(key)
    if items is None:
        return
    if not isinstance(items, list):
        where.sub(key).fail(f"expected a list, got {_kind(items)}", "write a YAML list")
    for i, item in enumerate(items):
        _template_container(item, where.sub(key).at(i))


def _template_spec(value: object, where: _Where) -> None:
    spec = _mapping(value, where)
    _no_patch_directive(spec, where)
    if "selector" in spec:
        where.sub("selector").fail("selectors are owned by buildx", "remove it")
    for key in sorted(set(spec) - _POD_SPEC_FIELDS):
        if not key.startswith("$"):
            where.sub(key).fail("not a PodSpec field", "check the spelling (see `kubectl explain pod.spec`)")
    _container_list(spec, "containers", where)
    _container_list(spec, "initContainers", where)


def _check_template(template: Mapping[str, object], where: _Where) -> None:
    _no_patch_directive(template, where)
    if template.get("metadata") is not None:
        _template_metadata(template["metadata"], where.sub("metadata"))
    if template.get("spec") is not None:
        _template_spec(template["spec"], where.sub("spec"))


def validate_pod_template(doc: object, source: str) -> dict[str, Any]:
    """Check a partial pod template read from elsewhere (a ConfigMap); return it as a PodTemplateSpec."""
    template = _template_root(doc, _Where(source))
    _check_template(template, _Where(source))
    return dict(template)


def _pod_template(value: object, where: _Where, base: Path) -> PodTemplate:
    name = _string(value, where)
    path = base / name
    doc = _read_template_yaml(path, where, name)
    template = _template_root(doc, _Where(f"{where.src}: {where.key} ({name})"))
    _check_template(template, _Where(f"{where.src}: {where.key} ({name})"))
    return PodTemplate(source=str(path), json_text=json.dumps(template, sort_keys=True))


def _configmap_name(value: object, where: _Where) -> str:
    name = _string(value, where)
    if len(name) > 253 or not _DNS_SUBDOMAIN.fullmatch(name):
        where.fail(f"invalid ConfigMap name {name!r}", "use lowercase letters, digits, '-' and '.'")
    return name


# --- builder -----------------------------------------------------------------------------------------

_Template = tuple[PodTemplate | None, str | None]


@dataclass(frozen=True)
class _BuilderDraft:
    """A builder section as written; `template` is None when this level does not set one."""

    driver_opts: Mapping[str, str]
    placement: Mapping[str, Any]
    template: _Template | None


def _template_choice(mapping: Mapping[str, object], where: _Where, base: Path) -> _Template | None:
    file, configmap = mapping.get("pod-template"), mapping.get("pod-template-configmap")
    if file is not None and configmap is not None:
        where.fail("both pod-template and pod-template-configmap are set", "keep one of them")
    if file is not None:
        return _pod_template(file, where.sub("pod-template"), base), None
    if configmap is not None:
        return None, _configmap_name(configmap, where.sub("pod-template-configmap"))
    return None


def _builder_draft(value: object, where: _Where, base: Path) -> _BuilderDraft:
    mapping = _mapping({} if value is None else value, where)
    _check_keys(mapping, _BUILDER_KEYS, where)
    return _BuilderDraft(
        driver_opts=_optional(mapping, "driver-opts", _driver_opts, where) or {},
        placement=_optional(mapping, "placement", _placement, where) or {},
        template=_template_choice(mapping, where, base),
    )


def _merge_builder(defaults: _BuilderDraft, override: _BuilderDraft) -> BuilderSpec:
    """driver-opts and placement merge per key; a pod template (file or ConfigMap) replaces."""
    template = override.template if override.template is not None else defaults.template
    pod_template, configmap = template or (None, None)
    return BuilderSpec(
        driver_opts=tuple({**defaults.driver_opts, **override.driver_opts}.items()),
        placement=replace(PlacementSpec(), **{**defaults.placement, **override.placement}),
        pod_template=pod_template,
        pod_template_configmap=configmap,
    )


# --- matrix expansion --------------------------------------------------------------------------------

_Combo = dict[str, str]


@dataclass(frozen=True)
class _Axes:
    """The `matrix:` section: axes in file order, plus exclude/include entries."""

    axes: tuple[tuple[str, tuple[str, ...]], ...] = ()
    exclude: tuple[_Combo, ...] = ()
    include: tuple[_Combo, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.axes)


def _axis(name: str, value: object, where: _Where) -> tuple[str, tuple[str, ...]]:
    if name == "image" or not _AXIS_RE.fullmatch(name):
        where.fail(f"invalid axis name {name!r}", "use letters, digits, '_' and '-' (`image` is implicit)")
    if not isinstance(value, list) or not value:
        where.fail(f"expected a non-empty list of values, got {_kind(value)}", "write a YAML list")
    return name, tuple(_scalar(v, where.at(i)) for i, v in enumerate(value))


def _combo(value: object, where: _Where, allowed: Iterable[str] | None) -> _Combo:
    mapping = _mapping(value, where)
    if allowed is not None:
        _check_keys(mapping, allowed, where)
    for key in mapping:
        if not _AXIS_RE.fullmatch(key):
            where.sub(key).fail("invalid matrix key", "use letters, digits, '_' and '-'")
    return {k: _scalar(v, where.sub(k)) for k, v in mapping.items()}


def _combo_list(
    mapping: Mapping[str, object], key: str, where: _Where, allowed: Iterable[str] | None
) -> tuple[_Combo, ...]:
    value = mapping.get(key)
    if value is None:
        return ()
    if not isinstance(value, list):
        where.sub(key).fail(f"expected a list of mappings, got {_kind(value)}", "write a YAML list")
    return tuple(_combo(item, where.sub(key).at(i), allowed) for i, item in enumerate(value))


def _parse_axes(value: object, where: _Where) -> _Axes:
    if value is None:
        return _Axes()
    mapping = _mapping(value, where)
    axes = tuple(_axis(k, v, where.sub(k)) for k, v in mapping.items() if k not in ("include", "exclude"))
    known = ("image", *(name for name, _ in axes))
    return _Axes(axes, _combo_list(mapping, "exclude", where, known), _combo_list(mapping, "include", where, None))


def _matches(combo: _Combo, entry: _Combo, keys: Iterable[str]) -> bool:
    return all(combo.get(k) == v for k, v in entry.items() if k in keys)


def _base_combos(axes: _Axes, images: Iterable[str]) -> list[_Combo]:
    values = [vals for _, vals in axes.axes]
    return [
        {"image": image, **dict(zip(axes.names, chosen, strict=True))}
        for image in images
        for chosen in itertools.product(*values)
    ]


def _apply_include(combos: list[_Combo], entry: _Combo, original: tuple[str, ...], base_count: int) -> None:
    """GitHub Actions semantics: extend every original combination it fits, else add a new one."""
    fits = [c for c in combos[:base_count] if _matches(c, entry, original)]
    for combo in fits:
        combo.update({k: v for k, v in entry.items() if k not in original})
    if not fits:
        combos.append(dict(entry))


def _expand(axes: _Axes, images: Iterable[str]) -> list[_Combo]:
    original = ("image", *axes.names)
    combos = [c for c in _base_combos(axes, images) if not any(_matches(c, e, original) for e in axes.exclude)]
    base_count = len(combos)
    for entry in axes.include:
        _apply_include(combos, entry, original, base_count)
    return combos


def _ordered_values(combo: _Combo, axes: _Axes) -> Pairs:
    """Axis values in file order, then keys only an include added."""
    first = [(k, combo[k]) for k in axes.names if k in combo]
    rest = [(k, v) for k, v in combo.items() if k != "image" and k not in axes.names]
    return tuple(first + rest)


def _slug(value: str, where: _Where) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", value.lower()).strip("-")
    if not slug:
        where.fail(f"matrix value {value!r} gives an empty name part", "use a value with letters or digits")
    return slug


def _expanded_name(name: str, combo: _Combo, axes: _Axes, where: _Where) -> str:
    parts = [_slug(combo[k], where) for k in axes.names if k in combo]
    return "-".join([name, *parts])


# --- substitution ------------------------------------------------------------------------------------


def _substitute_text(text: str, values: Mapping[str, str], where: _Where) -> str:
    def value(match: re.Match[str]) -> str:
        axis = match.group(1)
        if axis not in values:
            known = ", ".join(values)
            where.fail(f"unknown matrix axis {axis!r} in {match.group(0)!r}", f"use one of: {known}")
        return values[axis]

    return _MATRIX_REF.sub(value, text)


def _substitute(value: object, values: Mapping[str, str], where: _Where) -> object:
    if isinstance(value, str):
        return _substitute_text(value, values, where)
    if isinstance(value, list):
        return [_substitute(item, values, where.at(i)) for i, item in enumerate(value)]
    if isinstance(value, dict):
        return {k: _substitute(v, values, where.sub(str(k))) for k, v in value.items()}
    return value


def _substituted(raw: Mapping[str, object], combo: _Combo, where: _Where) -> dict[str, object]:
    fields = {k: _substitute(v, combo, where.sub(k)) for k, v in raw.items() if k in _SUBSTITUTED}
    return {**raw, **fields}


# --- images ------------------------------------------------------------------------------------------


def _base_name(raw: Mapping[str, object], where: _Where) -> str:
    name = _string(raw.get("name"), where.sub("name"))
    if len(name) > _NAME_MAX or not _NAME_RE.fullmatch(name):
        where.sub("name").fail(
            f"invalid image name {name!r}",
            f"use at most {_NAME_MAX} lowercase letters, digits and '-', starting and ending alphanumeric",
        )
    return name


def _context(raw: Mapping[str, object], base: Path, where: _Where) -> Path:
    text = _string(raw.get("context"), where)
    path = (base / text).resolve()
    if not path.is_dir():
        where.fail(f"directory not found: {text}", "fix the path (relative to the matrix file's directory)")
    return path


def _dockerfile(raw: Mapping[str, object], context: Path, where: _Where) -> Path:
    text = _string(raw.get("file", "Dockerfile"), where)
    path = (context / text).resolve()
    if not path.is_file():
        where.fail(f"file not found: {path}", "fix the path (relative to the image's context)")
    return path


_SECRET_TODO = "write 'id=<id>,env=<VAR>' or 'id=<id>,src=<file>' (quoted inside a [..] list)"


def _secret_problem(fields: list[str]) -> str:
    if len(fields) == 1 and fields[0].partition("=")[0] in ("id", "env", "src", "source", "type"):
        return "incomplete secret reference (in a YAML [a,b] list the comma splits items)"
    return "not a secret reference (looks like a literal value, or lacks id= and env=/src=)"


def _secret(value: object, where: _Where) -> str:
    text = _string(value, where)
    fields = next(csv.reader([text]), [])
    keys = {f.partition("=")[0] for f in fields}
    literal = any("=" not in f for f in fields) or keys - {"id", "type", "src", "source", "env"}
    if literal or "id" not in keys or not keys & {"env", "src", "source"}:
        where.fail(_secret_problem(fields), _SECRET_TODO)
    kind = next((f.partition("=")[2] for f in fields if f.startswith("type=")), "file")
    if kind not in ("file", "env"):
        where.fail(f"unsupported secret type {kind!r}", "use type=file or type=env")
    return text


def _output(value: object, where: _Where) -> str:
    return "none" if value is None else _string(value, where)


def _list_field(raw: Mapping[str, object], key: str, where: _Where) -> tuple[str, ...]:
    return _optional(raw, key, _string_list, where) or ()


def _map_field(raw: Mapping[str, object], key: str, where: _Where) -> Pairs:
    return _optional(raw, key, _string_map, where) or ()


def _image(raw: Mapping[str, object], name: str, values: Pairs, builder: BuilderSpec, ctx: _ImageCtx) -> ImageSpec:
    where = ctx.where
    context = _context(raw, ctx.base, where.sub("context"))
    return ImageSpec(
        name=name,
        context=context,
        file=_dockerfile(raw, context, where.sub("file")),
        target=_optional(raw, "target", _string, where),
        tags=_list_field(raw, "tags", where),
        build_args=_map_field(raw, "build-args", where),
        platforms=_list_field(raw, "platforms", where),
        output=_output(raw.get("output"), where.sub("output")),
        cache_from=_list_field(raw, "cache-from", where),
        cache_to=_list_field(raw, "cache-to", where),
        secrets=tuple(_secret(s, where.sub("secrets").at(i)) for i, s in enumerate(_list_field(raw, "secrets", where))),
        labels=_map_field(raw, "labels", where),
        builder=builder,
        matrix_values=values,
    )


@dataclass(frozen=True)
class _ImageCtx:
    """What every image of one `images[i]` entry shares."""

    where: _Where
    base: Path
    axes: _Axes
    builder: BuilderSpec


def _images_of(raw: Mapping[str, object], name: str, combos: Iterable[_Combo], ctx: _ImageCtx) -> Iterator[ImageSpec]:
    for combo in combos:
        expanded = _expanded_name(name, combo, ctx.axes, ctx.where.sub("name"))
        fields = _substituted(raw, combo, ctx.where)
        yield _image(fields, expanded, _ordered_values(combo, ctx.axes), ctx.builder, ctx)


def _image_list(value: object, where: _Where) -> list[dict[str, object]]:
    if not isinstance(value, list) or not value:
        where.fail(f"expected a non-empty list of images, got {_kind(value)}", "add at least one image")
    raws = [_mapping(item, where.at(i)) for i, item in enumerate(value)]
    for i, raw in enumerate(raws):
        _check_keys(raw, _IMAGE_KEYS, where.at(i))
    return raws


def _unique_names(names: Iterable[tuple[str, _Where]]) -> None:
    seen: dict[str, str] = {}
    for name, where in names:
        if name in seen:
            where.fail(f"duplicate image name {name!r} (also {seen[name]})", "give each image a unique name")
        seen[name] = where.key


def _check_combos(combos: list[_Combo], names: list[str], where: _Where) -> None:
    for combo in combos:
        if "image" not in combo:
            where.sub("include").fail(
                f"{combo} fits no combination, so it adds one without an image", "name the image in `image:`"
            )
        if combo["image"] not in names:
            where.sub("include").fail(
                f"adds a combination for unknown image {combo.get('image')!r}",
                f"name one of the images in `image:` ({', '.join(names)})",
            )
    if not combos:
        where.sub("exclude").fail("excludes every combination", "remove some exclude entries")


def _all_images(
    root: Mapping[str, object], defaults: _BuilderDraft, base: Path, where: _Where
) -> tuple[ImageSpec, ...]:
    raws = _image_list(root.get("images"), where.sub("images"))
    names = [_base_name(raw, where.sub("images").at(i)) for i, raw in enumerate(raws)]
    _unique_names((n, where.sub("images").at(i).sub("name")) for i, n in enumerate(names))
    axes = _parse_axes(root.get("matrix"), where.sub("matrix"))
    combos = _expand(axes, names)
    _check_combos(combos, names, where.sub("matrix"))
    images: list[tuple[ImageSpec, _Where]] = []
    for i, raw in enumerate(raws):
        at = where.sub("images").at(i)
        builder = _merge_builder(defaults, _builder_draft(raw.get("builder"), at.sub("builder"), base))
        mine = [c for c in combos if c["image"] == names[i]]
        ctx = _ImageCtx(at, base, axes, builder)
        images += [(img, at.sub("name")) for img in _images_of(raw, names[i], mine, ctx)]
    _unique_names((img.name, at) for img, at in images)
    return tuple(img for img, _ in images)


def _namespace(value: object, where: _Where) -> str:
    name = _string(value, where)
    if len(name) > 63 or not _NAME_RE.fullmatch(name):
        where.fail(f"invalid namespace {name!r}", "use a Kubernetes namespace name (lowercase, digits, '-')")
    return name


def load_matrix(path: Path) -> Matrix:
    """Read, validate and expand a matrix file; raises UserError on the first problem."""
    where = _Where(str(path))
    root = _mapping(_read_matrix_yaml(path), where)
    _check_keys(root, _TOP_KEYS, where)
    base = path.absolute().parent
    defaults = _builder_draft(root.get("builder"), where.sub("builder"), base)
    return Matrix(
        path=path.absolute(),
        namespace=_optional(root, "namespace", _namespace, where),
        jobs=_optional(root, "jobs", _positive_int, where),
        images=_all_images(root, defaults, base, where),
    )
