"""buildfan.matrix: loading, validation, defaults merging and matrix expansion."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from buildfan.errors import UserError
from buildfan.matrix import (
    BuilderSpec,
    ImageSpec,
    PlacementSpec,
    PodTemplate,
    load_matrix,
    split_kv_list,
)
from tests.unit.conftest import WriteMatrix

API = """\
images:
  - name: api
    context: ./services/api
"""


def error_of(path: Path) -> str:
    with pytest.raises(UserError) as info:
        load_matrix(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def assert_error(write_matrix: WriteMatrix, text: str, key: str, what: str) -> str:
    """The error names the file, the key path and (a regex for) what is wrong."""
    path = write_matrix(text)
    message = error_of(path)
    prefix = f"{path}: {key}: "
    assert message.startswith(prefix), message
    assert re.search(what, message[len(prefix) :]), message
    assert "; " in message[len(prefix) :], message
    return message


def with_builder(builder: str, image_extra: str = "") -> str:
    return f"builder:\n{builder}\n{API}{image_extra}"


# --- valid files ---------------------------------------------------------------------------------------


def test_minimal_matrix_gets_defaults(write_matrix: WriteMatrix, project: Path) -> None:
    matrix = load_matrix(write_matrix(API))
    assert matrix.path == project / "matrix.yaml"
    assert (matrix.namespace, matrix.jobs) == (None, None)
    assert matrix.images == (
        ImageSpec(
            name="api",
            context=project / "services" / "api",
            file=project / "services" / "api" / "Dockerfile",
        ),
    )
    image = matrix.images[0]
    assert image.output == "none"
    assert image.builder == BuilderSpec((), PlacementSpec("kubernetes.io/hostname", 1, "DoNotSchedule", None))


def test_full_image(write_matrix: WriteMatrix, project: Path) -> None:
    matrix = load_matrix(
        write_matrix(
            """\
            namespace: ci-builds
            jobs: 4
            images:
              - name: api
                context: services/api
                file: Dockerfile.dev
                target: runtime
                tags: [registry.example.com/api:1.2]
                build-args: {PYTHON: 3.12, N: 3, DEBUG: true}
                platforms: [linux/amd64, linux/arm64]
                output: push
                cache-from: [type=registry,ref=r/api:cache]
                cache-to: ["type=registry,ref=r/api:cache,mode=max"]
                secrets: ["id=npm,env=NPM_TOKEN", "id=pip,src=./pip.conf", "type=env,id=x,env=X"]
                labels: {org.opencontainers.image.source: "https://example.com"}
            """
        )
    )
    (image,) = matrix.images
    assert (matrix.namespace, matrix.jobs) == ("ci-builds", 4)
    assert image.file == project / "services" / "api" / "Dockerfile.dev"
    assert image.target == "runtime"
    assert image.tags == ("registry.example.com/api:1.2",)
    assert image.build_args == (("PYTHON", "3.12"), ("N", "3"), ("DEBUG", "true"))
    assert image.platforms == ("linux/amd64", "linux/arm64")
    assert image.output == "push"
    assert image.cache_from == ("type=registry", "ref=r/api:cache")  # a YAML flow list splits on commas
    assert image.cache_to == ("type=registry,ref=r/api:cache,mode=max",)
    assert image.secrets == ("id=npm,env=NPM_TOKEN", "id=pip,src=./pip.conf", "type=env,id=x,env=X")
    assert image.labels == (("org.opencontainers.image.source", "https://example.com"),)


def test_paths_are_relative_to_the_matrix_directory(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sub = project / "ci"
    sub.mkdir()
    (sub / "matrix.yaml").write_text(API.replace("./services/api", "../services/api"))
    monkeypatch.chdir(project / "services")
    image = load_matrix(Path("../ci/matrix.yaml")).images[0]
    assert image.context == project / "services" / "api"
    assert image.context.is_absolute() and image.file.is_absolute()


def test_driver_opts_values_become_strings(write_matrix: WriteMatrix) -> None:
    opts = """\
  driver-opts:
    requests.cpu: 1
    rootless: true
    qemu.install: false
    replicas: 1
    env.GODEBUG: x=1
    nodeselector: "kubernetes.io/arch=amd64,pool=ci"
    tolerations: "key=ci,operator=Equal,value=true,effect=NoSchedule;key=spot,operator=Exists"
    timeout: 5m
    labels: team=ci
    annotations: "a=b,example.com/c=d"
"""
    builder = load_matrix(write_matrix(with_builder(opts))).images[0].builder
    assert builder.driver_opts == (
        ("requests.cpu", "1"),
        ("rootless", "true"),
        ("qemu.install", "false"),
        ("replicas", "1"),
        ("env.GODEBUG", "x=1"),
        ("nodeselector", "kubernetes.io/arch=amd64,pool=ci"),
        (
            "tolerations",
            "key=ci,operator=Equal,value=true,effect=NoSchedule;key=spot,operator=Exists",
        ),
        ("timeout", "5m"),
        ("labels", "team=ci"),
        ("annotations", "a=b,example.com/c=d"),
    )


def test_image_builder_overrides_merge_per_key(write_matrix: WriteMatrix, project: Path) -> None:
    (project / "tmpl.yaml").write_text("nodeSelector: {pool: ci}\n")
    text = """\
builder:
  driver-opts: {requests.cpu: "1", schedulername: binpack}
  placement: {spread: topology.kubernetes.io/zone, max-skew: 2, anti-affinity: preferred}
  pod-template: tmpl.yaml
images:
  - name: api
    context: services/api
    builder:
      driver-opts: {requests.cpu: "2", requests.memory: 4Gi}
      placement: {when-unsatisfiable: ScheduleAnyway}
      pod-template-configmap: my-buildkit-template
  - name: web
    context: services/web
    builder:
      placement: {spread: none, anti-affinity: none}
"""
    api, web = load_matrix(write_matrix(text)).images
    assert api.builder.driver_opts == (
        ("requests.cpu", "2"),
        ("schedulername", "binpack"),
        ("requests.memory", "4Gi"),
    )
    assert api.builder.placement == PlacementSpec("topology.kubernetes.io/zone", 2, "ScheduleAnyway", "preferred")
    assert (api.builder.pod_template, api.builder.pod_template_configmap) == (None, "my-buildkit-template")
    assert web.builder.placement == PlacementSpec(None, 2, "DoNotSchedule", None)
    assert web.builder.pod_template is not None
    assert web.builder.pod_template.as_dict() == {"spec": {"nodeSelector": {"pool": "ci"}}}


def test_pod_template_spec_form_is_kept(write_matrix: WriteMatrix, project: Path) -> None:
    (project / "t.yaml").write_text(
        """\
metadata:
  labels: {team: ci}
  annotations: {a: b}
spec:
  containers:
    - name: buildkitd
      resources: {limits: {memory: 8Gi}}
      volumeMounts: [{name: cache, mountPath: /cache}]
  volumes: [{name: cache, emptyDir: {}}]
  affinity: {nodeAffinity: {}}
"""
    )
    template = load_matrix(write_matrix(with_builder("  pod-template: t.yaml"))).images[0].builder.pod_template
    assert isinstance(template, PodTemplate)
    assert template.source == str(project / "t.yaml")
    data = template.as_dict()
    assert data["metadata"]["labels"] == {"team": "ci"}
    assert data["spec"]["containers"][0]["resources"] == {"limits": {"memory": "8Gi"}}
    data["spec"]["containers"].clear()  # a copy: the spec stays intact
    assert template.as_dict()["spec"]["containers"]


def test_same_pod_template_gives_equal_specs(write_matrix: WriteMatrix, project: Path) -> None:
    (project / "t.yaml").write_text("tolerations: [{key: a, operator: Exists}]\n")
    text = with_builder("  pod-template: t.yaml", "  - name: web\n    context: services/web\n")
    api, web = load_matrix(write_matrix(text)).images
    assert api.builder == web.builder
    assert hash(api.builder) == hash(web.builder)


# --- matrix expansion ----------------------------------------------------------------------------------


def test_expansion_with_exclude_and_include(write_matrix: WriteMatrix) -> None:
    text = """\
images:
  - name: api
    context: services/api
    tags: ["r/api:${{ matrix.variant }}-${{matrix.os}}"]
  - name: web
    context: services/web
matrix:
  variant: [slim, full]
  os: [bookworm]
  exclude: [{image: api, variant: full}]
  include: [{image: api, variant: debug, os: bookworm}]
"""
    images = load_matrix(write_matrix(text)).images
    assert [i.name for i in images] == [
        "api-slim-bookworm",
        "api-debug-bookworm",
        "web-slim-bookworm",
        "web-full-bookworm",
    ]
    assert images[0].tags == ("r/api:slim-bookworm",)
    assert images[1].tags == ("r/api:debug-bookworm",)
    assert images[1].matrix_values == (("variant", "debug"), ("os", "bookworm"))


def test_include_follows_github_semantics(write_matrix: WriteMatrix) -> None:
    """The example from GitHub's docs, with `fruit` and `animal` axes on one image."""
    text = (
        API
        + """\
matrix:
  fruit: [apple, pear]
  animal: [cat, dog]
  include:
    - color: green
    - color: pink
      animal: cat
    - fruit: apple
      shape: circle
    - image: api
      fruit: banana
    - image: api
      fruit: banana
      animal: cat
"""
    )
    got = {i.name: dict(i.matrix_values) for i in load_matrix(write_matrix(text)).images}
    assert got == {
        "api-apple-cat": {"fruit": "apple", "animal": "cat", "color": "pink", "shape": "circle"},
        "api-apple-dog": {"fruit": "apple", "animal": "dog", "color": "green", "shape": "circle"},
        "api-pear-cat": {"fruit": "pear", "animal": "cat", "color": "pink"},
        "api-pear-dog": {"fruit": "pear", "animal": "dog", "color": "green"},
        "api-banana": {"fruit": "banana"},
        "api-banana-cat": {"fruit": "banana", "animal": "cat"},
    }


def test_substitution_covers_every_string_field(write_matrix: WriteMatrix, project: Path) -> None:
    (project / "services" / "api" / "Dockerfile.full").write_text("FROM scratch\n")
    text = """\
images:
  - name: api
    context: services/${{ matrix.image }}
    file: Dockerfile.${{ matrix.v }}
    target: t-${{ matrix.v }}
    tags: ["r/api:${{ matrix.v }}"]
    build-args: {V: "${{ matrix.v }}"}
    output: type=registry,name=r/${{ matrix.v }}
    cache-from: ["c-${{ matrix.v }}"]
    cache-to: ["d-${{ matrix.v }}"]
    labels: {v: "${{ matrix.v }}"}
matrix:
  v: [full]
"""
    image = load_matrix(write_matrix(text)).images[0]
    assert image.name == "api-full"
    assert image.context == project / "services" / "api"
    assert image.file.name == "Dockerfile.full"
    assert (image.target, image.output) == ("t-full", "type=registry,name=r/full")
    assert (image.tags, image.cache_from, image.cache_to) == (("r/api:full",), ("c-full",), ("d-full",))
    assert image.build_args == (("V", "full"),) and image.labels == (("v", "full"),)


def test_values_are_slugged_into_names(write_matrix: WriteMatrix) -> None:
    text = API + "matrix:\n  python: ['3.12', 'Py_3']\n  debug: [true]\n"
    images = load_matrix(write_matrix(text)).images
    assert [i.name for i in images] == ["api-3-12-true", "api-py-3-true"]
    assert images[0].matrix_values == (("python", "3.12"), ("debug", "true"))


# --- errors: file and top level ------------------------------------------------------------------------


def test_malformed_yaml_names_file_and_line(write_matrix: WriteMatrix) -> None:
    path = write_matrix("images:\n  - name: api\n    context: [unclosed\n")
    assert re.fullmatch(rf"{re.escape(str(path))}: line \d+: invalid YAML: .+; fix the YAML syntax", error_of(path))


def test_duplicate_yaml_keys_are_rejected(write_matrix: WriteMatrix) -> None:
    path = write_matrix(API + "images: []\n")
    assert error_of(path).startswith(f"{path}: line 4: invalid YAML: duplicate key 'images'")


def test_missing_file(project: Path) -> None:
    message = error_of(project / "nope.yaml")
    assert message.startswith(f"{project / 'nope.yaml'}: (top level): cannot read")


@pytest.mark.parametrize(
    ("text", "key", "what"),
    [
        ("- a\n", r"\(top level\)", "expected a mapping, got list"),
        (API + "extra: 1\n", "extra", "unknown key"),
        (API + "jobs: 0\n", "jobs", "positive integer"),
        (API + "jobs: true\n", "jobs", "positive integer"),
        (API + "namespace: Bad_NS\n", "namespace", "invalid namespace"),
        ("images: []\n", "images", "non-empty list"),
        ("images:\n  - name: api\n", r"images\[0\]\.context", "expected a non-empty string"),
        ("images:\n  - context: x\n", r"images\[0\]\.name", "expected a non-empty string"),
        (API.replace("name: api", "name: Api_1"), r"images\[0\]\.name", "invalid image name"),
        (API.replace("name: api", "name: " + "a" * 41), r"images\[0\]\.name", "invalid image name"),
        (
            API.replace("./services/api", "./services/nope"),
            r"images\[0\]\.context",
            "directory not found: ./services/nope",
        ),
        (API + "    file: Nope\n", r"images\[0\]\.file", "file not found"),
        (API + "    colour: red\n", r"images\[0\]\.colour", "unknown key"),
        (API + "    tags: r/api:1\n", r"images\[0\]\.tags", "expected a list"),
        (API + "    tags: [1]\n", r"images\[0\]\.tags\[0\]", "non-empty string"),
        (API + "    build-args: [A]\n", r"images\[0\]\.build-args", "expected a mapping"),
        (API + "    labels: {a: [1]}\n", r"images\[0\]\.labels\.a", "scalar"),
        (
            API + "  - name: api\n    context: services/web\n",
            r"images\[1\]\.name",
            "duplicate image name 'api'",
        ),
    ],
)
def test_image_errors(write_matrix: WriteMatrix, text: str, key: str, what: str) -> None:
    path = write_matrix(text)
    message = error_of(path)
    assert re.match(rf"{re.escape(str(path))}: {key}: .*{what}.*; ", message), message


def test_context_error_matches_documented_format(write_matrix: WriteMatrix) -> None:
    path = write_matrix(API + "  - name: web\n    context: ./services/nope\n")
    assert error_of(path) == (
        f"{path}: images[1].context: directory not found: ./services/nope; "
        "fix the path (relative to the matrix file's directory)"
    )


@pytest.mark.parametrize(
    ("secret", "what"),
    [
        ("hunter2", "literal value"),
        ("id=npm,value=hunter2", "literal value"),
        ("id=npm", "incomplete secret reference"),
        ("id=npm,type=env", "lacks id= and env=/src="),
        ("env=NPM_TOKEN", "incomplete secret reference .*comma splits items"),
        ("type=ssh,id=x,src=y", "unsupported secret type 'ssh'"),
    ],
)
def test_secret_errors(write_matrix: WriteMatrix, secret: str, what: str) -> None:
    assert_error(write_matrix, API + f"    secrets: ['{secret}']\n", r"images[0].secrets[0]", what)


# --- errors: builder -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("opt", "what"),
    [
        ("foo: bar", "unknown kubernetes driver-opt"),
        ("namespace: x", "namespace is managed by buildfan"),
        ("replicas: 2", "replicas=2"),
        ("persistent-volume-claim.requests.storage: 10Gi", "StatefulSet"),
        ("labels: app=x", "label 'app' is reserved"),
        ("labels: buildfan.dev/run=x", "label 'buildfan.dev/run' is reserved"),
        ("labels: a=b=c", "not a k=v,k2=v2 list"),
        ("labels: 'a=b,'", "not a k=v,k2=v2 list"),
        ("labels: 'a=b c'", "invalid label value"),
        ("nodeselector: 'a b=c'", "invalid label key"),
        ("annotations: buildx.docker.com/platform=x", "reserved"),
        ("rootless: maybe", "not a boolean"),
        ("requests.cpu: lots", "not a Kubernetes quantity"),
        ("limits.memory: 4GB", "not a Kubernetes quantity"),
        ("timeout: 5 minutes", "not a Go duration"),
        ("loadbalance: round-robin", "invalid loadbalance"),
        ("'env.': x", "unknown kubernetes driver-opt"),
        ("tolerations: 'key=a;'", "empty toleration"),
        ("tolerations: 'key=a,color=red'", "unknown toleration field 'color'"),
        ("tolerations: 'key=a,operator=Maybe'", "invalid toleration"),
        ("tolerations: 'key=a,tolerationSeconds=soon'", "invalid toleration"),
        ("tolerations: 'key'", "not key=value"),
        ("image: [a]", "scalar"),
    ],
)
def test_driver_opt_errors(write_matrix: WriteMatrix, opt: str, what: str) -> None:
    key = opt.split(":")[0].strip("'")
    text = with_builder(f"  driver-opts:\n    {opt}")
    assert_error(write_matrix, text, f"builder.driver-opts.{key}", what)


def test_image_level_driver_opt_error_names_the_image(write_matrix: WriteMatrix) -> None:
    text = API + "    builder: {driver-opts: {replicas: '3'}}\n"
    assert_error(write_matrix, text, "images[0].builder.driver-opts.replicas", "replicas=3")


@pytest.mark.parametrize(
    ("placement", "key", "what"),
    [
        ("spread: 'not a key!'", "spread", "invalid topology key"),
        ("max-skew: 0", "max-skew", "positive integer"),
        ("when-unsatisfiable: Never", "when-unsatisfiable", "invalid value 'Never'"),
        ("anti-affinity: always", "anti-affinity", "invalid value 'always'"),
        ("zone: a", "zone", "unknown key"),
    ],
)
def test_placement_errors(write_matrix: WriteMatrix, placement: str, key: str, what: str) -> None:
    assert_error(write_matrix, with_builder(f"  placement:\n    {placement}"), f"builder.placement.{key}", what)


def test_unknown_builder_key(write_matrix: WriteMatrix) -> None:
    assert_error(write_matrix, with_builder("  podtemplate: x"), "builder.podtemplate", "unknown key")


def test_template_and_configmap_are_exclusive(write_matrix: WriteMatrix, project: Path) -> None:
    (project / "t.yaml").write_text("spec: {}\n")
    text = with_builder("  pod-template: t.yaml\n  pod-template-configmap: tmpl")
    assert_error(write_matrix, text, "builder", "both pod-template and pod-template-configmap")


def test_bad_configmap_name(write_matrix: WriteMatrix) -> None:
    text = with_builder("  pod-template-configmap: My_Template")
    assert_error(write_matrix, text, "builder.pod-template-configmap", "invalid ConfigMap name")


@pytest.mark.parametrize(
    ("template", "where", "what"),
    [
        ("containers: [{name: buildkitd, image: x}]", "spec.containers[0].image", "must not change .* image"),
        ("spec: {containers: [{name: buildkitd, command: [sh]}]}", "spec.containers[0].command", "command"),
        ("containers: [{name: x}, {name: buildkitd, args: []}]", "spec.containers[1].args", "args"),
        ("containers: [{image: busybox}]", "spec.containers[0]", "container without a name"),
        ("containers: {name: buildkitd}", "spec.containers", "expected a list"),
        ("metadata: {labels: {app: x}}", "metadata.labels.app", "reserved"),
        ("metadata: {labels: {buildfan.dev/run: x}}", "metadata.labels.buildfan.dev/run", "reserved"),
        ("metadata: {name: x}", "metadata.name", "unknown key"),
        ("spec: {selector: {matchLabels: {a: b}}}", "spec.selector", "selectors are owned by buildx"),
        ("selector: {matchLabels: {a: b}}", "selector", "not a PodSpec field"),
        ("spec: {nodeSelectr: {a: b}}", "spec.nodeSelectr", "not a PodSpec field"),
        ("spec: {$patch: replace}", r"spec.$patch", "patch directives"),
        ("spec: {containers: [{name: buildkitd, $patch: delete}]}", r"spec.containers[0].$patch", "patch"),
        ("metadata: {}\ntolerations: []", "(top level)", "mixes PodTemplateSpec keys"),
        ("[a]", "(top level)", "expected a mapping"),
    ],
)
def test_pod_template_errors(write_matrix: WriteMatrix, project: Path, template: str, where: str, what: str) -> None:
    (project / "t.yaml").write_text(template + "\n")
    path = write_matrix(with_builder("  pod-template: t.yaml"))
    message = error_of(path)
    prefix = f"{path}: builder.pod-template (t.yaml): {where}: "
    assert message.startswith(prefix), message
    assert re.search(what, message[len(prefix) :]), message


def test_pod_template_file_errors(write_matrix: WriteMatrix, project: Path) -> None:
    path = write_matrix(with_builder("  pod-template: missing.yaml"))
    assert error_of(path).startswith(f"{path}: builder.pod-template: cannot read missing.yaml")
    (project / "bad.yaml").write_text("spec:\n  containers: [\n")
    path = write_matrix(with_builder("  pod-template: bad.yaml"))
    assert re.match(rf"{re.escape(str(path))}: builder.pod-template: bad.yaml line \d+: invalid YAML", error_of(path))


# --- errors: matrix ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("matrix", "key", "what"),
    [
        ("image: [a]", "matrix.image", "invalid axis name 'image'"),
        ("v: []", "matrix.v", "non-empty list"),
        ("v: slim", "matrix.v", "non-empty list"),
        ("v: [[a]]", r"matrix.v[0]", "scalar"),
        ("v: [a]\n  exclude: [{variant: a}]", "matrix.exclude[0].variant", "unknown key"),
        ("v: [a]\n  exclude: {v: a}", "matrix.exclude", "expected a list"),
        ("v: [a]\n  exclude: [{v: a}]", "matrix.exclude", "excludes every combination"),
        ("v: [a]\n  include: [{v: b}]", "matrix.include", "without an image"),
        ("v: [a]\n  include: [{image: nope, v: b}]", "matrix.include", "unknown image 'nope'"),
        ("v: ['!!']", "images[0].name", "empty name part"),
    ],
)
def test_matrix_errors(write_matrix: WriteMatrix, matrix: str, key: str, what: str) -> None:
    assert_error(write_matrix, API + f"matrix:\n  {matrix}\n", key, what)


def test_unknown_axis_reference(write_matrix: WriteMatrix) -> None:
    text = API + "    tags: ['r/api:${{ matrix.varient }}']\nmatrix:\n  variant: [a]\n"
    message = assert_error(write_matrix, text, "images[0].tags[0]", "unknown matrix axis 'varient'")
    assert message.endswith("use one of: image, variant")


def test_axis_reference_without_matrix(write_matrix: WriteMatrix) -> None:
    text = API + "    target: ${{ matrix.v }}\n"
    assert_error(write_matrix, text, "images[0].target", "unknown matrix axis 'v'")


def test_duplicate_names_after_expansion(write_matrix: WriteMatrix) -> None:
    text = API + "  - name: api-a\n    context: services/web\nmatrix:\n  v: [a]\n  include: [{image: api-a}]\n"
    # api x a -> api-a; api-a x a -> api-a-a; include {image: api-a} only extends api-a-a.
    assert [i.name for i in load_matrix(write_matrix(text)).images] == ["api-a", "api-a-a"]
    text = API + "  - name: api-a\n    context: services/web\nmatrix:\n  v: [a, '']\n"
    assert_error(write_matrix, text, "images[0].name", "empty name part")
    text = (
        API + "  - name: api-x\n    context: services/web\n" + "matrix:\n  v: [x]\n  include: [{image: api-x, v: ''}]\n"
    )
    assert_error(write_matrix, text, "images[1].name", "empty name part")


def test_collision_after_expansion_is_an_error(write_matrix: WriteMatrix) -> None:
    text = API + "  - name: api-a\n    context: services/web\nmatrix:\n  v: [a, b]\n  w: ['', x]\n"
    assert_error(write_matrix, text, "images[0].name", "empty name part")
    text = API + "  - name: api-b\n    context: services/web\nmatrix:\n  v: [b-c, c]\n"
    assert_error(write_matrix, text, "images[1].name", "duplicate image name 'api-b-c' .also images.0..name")


# --- helpers -------------------------------------------------------------------------------------------


def test_split_kv_list_matches_buildx() -> None:
    assert split_kv_list("a=b,c=d") == {"a": "b", "c": "d"}
    assert split_kv_list('"a=b,c=d"') == {"a": "b", "c": "d"}
    assert split_kv_list("a=b=c") is None
    assert split_kv_list("") is None
