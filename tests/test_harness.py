"""The floor plan's borders and the harness (harness/): only tests/ imports `tests`; the serving package
(server/) imports neither the tests, the harness nor the benchmarks, and the trainer (training/) only
from its command; the wheel ships server/ and training/ alone; `wait_until` says what it waited for."""

from __future__ import annotations

import ast
import asyncio
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from harness.processes import free_port, kill_tree, stop_process, wait_until, wait_until_async

ROOT = Path(__file__).resolve().parents[1]


def _imported_packages(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_only_the_tests_import_tests_and_the_product_imports_no_harness():
    wrong = []
    for folder in ("server", "training", "harness", "benchmarks", "scripts"):
        files = sorted((ROOT / folder).rglob("*.py"))
        assert files, folder
        for path in files:
            imported, name = _imported_packages(path), str(path.relative_to(ROOT))
            if "tests" in imported:
                wrong.append(f"{name} imports tests")
            if folder in ("server", "training") and imported & {"harness", "benchmarks"}:
                wrong.append(f"{name} imports {sorted(imported & {'harness', 'benchmarks'})} (the wheel leaves them out)")
            if folder == "server" and "training" in imported and name != "server/commands/train.py":
                wrong.append(f"{name} imports training (only the train command may)")
    assert wrong == []


def test_the_wheel_ships_the_server_and_the_trainer_only():
    from setuptools import find_packages

    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    tops = {name.split(".")[0] for name in find_packages(str(ROOT), include=include)}
    assert tops == {"server", "training"}


def test_wait_until_returns_the_value_or_names_what_it_waited_for():
    calls = []
    assert wait_until(lambda: calls.append(1) or (len(calls) >= 3 and "done"), 30, "three calls", interval_s=0) == "done"
    with pytest.raises(TimeoutError, match=r"waited 0\.05 s for the moon to turn blue; last saw False"):
        wait_until(lambda: False, 0.05, "the moon to turn blue")
    with pytest.raises(TimeoutError, match="the loop to agree"):
        asyncio.run(wait_until_async(lambda: 0, 0.05, "the loop to agree"))


def test_stop_process_falls_back_to_sigkill():
    ignores_sigterm = "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(flush=True); time.sleep(600)"
    proc = subprocess.Popen([sys.executable, "-c", ignores_sigterm], stdout=subprocess.PIPE, text=True)
    proc.stdout.readline()  # the handler is in place
    assert stop_process(proc, timeout_s=0.5) == -9
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    kill_tree(proc)
    assert proc.returncode == -9
    assert 0 < free_port() < 65536
