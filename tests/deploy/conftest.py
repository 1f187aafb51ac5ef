"""Fixtures of the Kubernetes tests: the rendered base and overlay, and the schema validator."""

from __future__ import annotations

import pytest

from tests.deploy.support import RENDERED, _render


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {name: _render(folder) for name, folder in RENDERED.items()}


@pytest.fixture(scope="module")
def validator():
    return pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
