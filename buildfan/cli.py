"""The command line: argument parsing and the one top-level error handler.

Exit codes (documented in the README):
    0    every image built (or: plan/gc/report succeeded)
    1    at least one build failed
    2    bad input or environment: matrix, pod template, kubeconfig, namespace, cluster unreachable
    3    unexpected error (a bug: the traceback is in the log)
    130  interrupted by SIGINT/SIGTERM (after teardown)
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog
import yaml

from buildfan import __version__, log
from buildfan.errors import EXIT_BUILD_FAILED, EXIT_OK, BuildfanError, UserError
from buildfan.matrix import load_matrix

EXIT_UNEXPECTED = 3
logger = structlog.get_logger("buildfan")


# ---------------------------------------------------------------- parsing


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="buildfan",
        description="Fan a matrix of Docker image builds out over a Kubernetes cluster: one BuildKit builder "
        "per image, spread across nodes, built concurrently, with a placement and layer-extraction report.",
        epilog="Exit codes: 0 all built, 1 a build failed, 2 bad input, 3 unexpected error, 130 interrupted.",
    )
    p.add_argument("--version", action="version", version=f"buildfan {__version__}")
    p.add_argument(
        "--log-format",
        choices=("auto", "console", "plain", "text", "json"),
        default="auto",
        help="log rendering (default: console on a terminal, plain otherwise)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logs: every Kubernetes and buildx call")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, in-cluster)")
    p.add_argument("--context", help="kubeconfig context (default: the current context)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _run_parser(sub)
    _plan_parser(sub)
    _gc_parser(sub)
    _report_parser(sub)
    _action_parser(sub)
    return p


def _run_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    r = sub.add_parser(
        "run",
        help="build every image of a matrix on its own builder, then tear down",
        description="Create one BuildKit builder per image (spread across nodes), build all images "
        "concurrently, write a report, and remove everything the run created.",
    )
    r.add_argument("matrix", type=Path, help="the matrix file (matrix.yaml)")
    r.add_argument(
        "--report",
        type=Path,
        default=Path("buildfan-report.json"),
        help="where to write the JSON report (default: %(default)s)",
    )
    r.add_argument("--jobs", type=_positive, help="builds at once (default: the matrix's `jobs`, else all)")
    r.add_argument("--fail-fast", action="store_true", help="stop the other builds when one fails")
    r.add_argument(
        "--no-build",
        action="store_true",
        help="create and place the builders, report placement, tear down; build nothing",
    )
    r.add_argument("--namespace", help="namespace for the builders (default: the matrix's, else the context's)")
    r.add_argument("--svg", type=Path, help="timeline picture (default: timeline.svg next to the report)")
    r.add_argument(
        "--run-file",
        type=Path,
        help="write the run id and namespace here as soon as they are known (for `gc --run-file`)",
    )


def _plan_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    pl = sub.add_parser(
        "plan",
        help="print builders, driver-opts and manifests; touch nothing",
        description="Show what `run` would create. Reads the matrix; writes nothing to the cluster.",
    )
    pl.add_argument("matrix", type=Path)
    pl.add_argument("--namespace", help="namespace to plan for (default: the matrix's, else the context's)")


def _gc_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    g = sub.add_parser(
        "gc",
        help="remove leftovers of dead runs (selected only by buildfan's labels)",
        description="Delete Deployments, ConfigMaps and PodTemplates labelled "
        "app.kubernetes.io/managed-by=buildfan that are older than --older-than, and their "
        "builders in the local buildx store. Unlabelled objects are never touched.",
    )
    g.add_argument(
        "--older-than",
        type=parse_duration,
        default=dt.timedelta(hours=1),
        help="age threshold such as 30m, 1h, 2d, 0s (default: 1h)",
    )
    g.add_argument("--namespace", help="only this namespace (default: all namespaces)")
    g.add_argument("--run-id", help="remove this run's leftovers whatever their age")
    g.add_argument("--run-file", type=Path, help="read the run id from a file written by `run --run-file`")
    g.add_argument("--dry-run", action="store_true", help="print what would be removed")


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def parse_duration(text: str) -> dt.timedelta:
    m = re.fullmatch(r"(\d+)([smhd])", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"expected a duration like 30m, 1h, 2d or 0s, got {text!r}")
    unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[m[2]]
    return dt.timedelta(**{unit: int(m[1])})


# ---------------------------------------------------------------- commands


def cmd_run(args: argparse.Namespace) -> int:
    from buildfan import console, runner
    from buildfan.cluster import Cluster

    matrix = load_matrix(args.matrix)
    if args.namespace:
        matrix = dataclasses.replace(matrix, namespace=args.namespace)
    opts = runner.RunOptions(jobs=args.jobs, fail_fast=args.fail_fast, build=not args.no_build)
    cluster = Cluster(args.kubeconfig, args.context)
    if args.run_file:
        _write_run_file(args.run_file, opts.run_id, matrix.namespace or cluster.default_namespace)
    view = console.choose(sys.stdout, [i.name for i in matrix.images], os.environ)
    with runner.interrupts(), view:
        outcome = runner.run(matrix, opts, view.event, cluster=cluster)
    publish(outcome.report, args.report, args.svg or args.report.with_name("timeline.svg"))
    return EXIT_BUILD_FAILED if outcome.report["summary"]["failed"] else EXIT_OK


def publish(report: dict[str, Any], report_path: Path, svg: Path) -> None:
    """Write the report and its picture, print the summary, and hand results to the CI system, if any."""
    from buildfan import ci, timeline
    from buildfan.report import format_table, write_report

    write_report(report, report_path)
    timeline.write_svg(report, svg)
    print(format_table(report))
    print(f"report: {report_path}  timeline: {svg}")
    if ci.github_active(os.environ):
        if "GITHUB_OUTPUT" in os.environ:
            ci.write_github_outputs(ci.github_outputs(report, report_path), os.environ["GITHUB_OUTPUT"])
        if "GITHUB_STEP_SUMMARY" in os.environ:
            ci.write_step_summary(report, os.environ["GITHUB_STEP_SUMMARY"])
    if ci.gitlab_active(os.environ):
        written = ci.write_gitlab_reports(report, report_path.parent)
        print("gitlab reports: " + ", ".join(str(p) for p in written.values()))


def cmd_report(args: argparse.Namespace) -> int:
    from buildfan import timeline
    from buildfan.report import format_table

    try:
        report = json.loads(args.report.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{args.report}: cannot read a buildfan report: {e}") from e
    if not isinstance(report, dict) or report.get("schema") != "buildfan-report/v1":
        raise UserError(f"{args.report}: not a buildfan-report/v1 report")
    print(format_table(report))
    if args.svg:
        timeline.write_svg(report, args.svg)
        print(f"timeline: {args.svg}")
    return EXIT_OK


def _write_run_file(path: Path, run_id: str, namespace: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"run_id": run_id, "namespace": namespace}) + "\n")


def cmd_plan(args: argparse.Namespace) -> int:
    from buildfan.cluster import namespace_from_kubeconfig
    from buildfan.plan import driver_opt_args, new_run_id, plan_builders

    matrix = load_matrix(args.matrix)
    namespace = args.namespace or matrix.namespace or namespace_from_kubeconfig(args.kubeconfig, args.context)
    for p in plan_builders(matrix, new_run_id(), namespace):
        print(f"# image {p.image}: builder {p.builder}, Deployment {p.namespace}/{p.deployment}")
        print(
            "docker buildx create --driver kubernetes --bootstrap --name",
            p.builder,
            " ".join(f"--driver-opt '{o}'" for o in driver_opt_args(p)),
        )
        if p.manifest is None:
            print("# buildx creates its own Deployment (placement: none, no pod template)\n")
            continue
        template = p.pod_template.source if p.pod_template else p.pod_template_configmap
        if template:
            print(f"# the API server merges the pod template from {template} into this at run time")
        print(yaml.safe_dump(p.manifest, sort_keys=False), end="---\n")
    return EXIT_OK


def cmd_gc(args: argparse.Namespace) -> int:
    from buildfan import gc
    from buildfan.buildx import Buildx
    from buildfan.cluster import Cluster

    run_id, namespace = args.run_id, args.namespace
    if args.run_file:
        run_id, namespace = _read_run_file(args.run_file)
    res = gc.collect(Cluster(args.kubeconfig, args.context), Buildx(), namespace, args.older_than, run_id, args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    print(f"gc: {verb} {len(res.deleted)} object(s) and {len(res.builders)} builder(s) of {len(res.runs)} run(s)")
    return EXIT_OK


def _read_run_file(path: Path) -> tuple[str, str]:
    try:
        data = json.loads(path.read_text())
        return str(data["run_id"]), str(data["namespace"])
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"{path}: not a run file written by `buildfan run --run-file` ({e})") from e


def _report_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rp = sub.add_parser("report", help="print a report's summary tables and redraw its timeline picture")
    rp.add_argument("report", type=Path, help="a buildfan-report.json")
    rp.add_argument("--svg", type=Path, help="write the timeline picture (SVG) here")


def _action_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    a = sub.add_parser("action", help="the GitHub Action's entry points (reads INPUT_* variables)")
    a.add_argument("step", choices=("main", "post"), help="main: run the matrix; post: clean up after it")


def cmd_action(args: argparse.Namespace) -> int:
    from buildfan import action

    return action.main_step(run_cli) if args.step == "main" else action.post_step(run_cli)


def run_cli(argv: list[str]) -> int:
    """Parse and run one command line in-process (the Action builds its own)."""
    return dispatch(parser().parse_args(argv))


COMMANDS = {"run": cmd_run, "plan": cmd_plan, "gc": cmd_gc, "report": cmd_report, "action": cmd_action}


# ---------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    log.configure(args.log_format, args.verbose)
    return dispatch(args)


def dispatch(args: argparse.Namespace) -> int:
    try:
        return COMMANDS[args.command](args)
    except BuildfanError as e:
        print(f"buildfan: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("buildfan: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        logger.exception("unexpected error")
        print(f"buildfan: unexpected error: {e!r} (a bug: please report it with the log above)", file=sys.stderr)
        return EXIT_UNEXPECTED


def console_main() -> None:
    sys.exit(main())
