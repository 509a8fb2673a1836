"""An unreachable cluster is bad input: one line naming the API server, exit 2, after bounded retries."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from buildfan.cli import main


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the socket goes


def test_unreachable_cluster_is_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port = closed_port()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "c",
                "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u", "namespace": "ns"}}],
            }
        )
    )
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "m.yaml").write_text("images:\n  - name: a\n    context: ./a\n")
    code = main(["--log-format", "json", "--kubeconfig", str(kubeconfig), "run", str(tmp_path / "m.yaml")])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("buildfan: error:")]
    assert code == 2
    assert len(err) == 1 and f"127.0.0.1:{port}" in err[0] and "unreachable" in err[0], err
