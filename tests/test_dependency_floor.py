"""The transformers floor pyproject.toml declares is one the code really runs on: the oldest release it
allows (with the tokenizers and huggingface_hub of its day) is installed beside the suite's own, and
the engine's parity with transformers' reference model, tokenization and training run on it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What pip resolved for the floor in a fresh environment (transformers 4.44 wants tokenizers < 0.20 and
# a huggingface_hub before 1.0).
FLOOR_COMPANIONS = ("tokenizers==0.19.*", "huggingface_hub==0.36.*")


def _declared_floor(package: str) -> str:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    spec = next(d for d in dependencies if re.match(rf"{package}\b", d))
    return re.search(r">=\s*([\d.]+)", spec).group(1)


@pytest.mark.slow
def test_the_declared_transformers_floor_runs_the_engine_and_its_reference(tmp_path):
    floor = _declared_floor("transformers")
    target = tmp_path / "floor"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
         f"transformers=={floor}.*", *FLOOR_COMPANIONS],
        capture_output=True, text=True, timeout=600,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(ROOT)])}  # the floor shadows the suite's
    version = subprocess.run([sys.executable, "-c", "import transformers; print(transformers.__version__)"],
                             env=env, capture_output=True, text=True, timeout=120)
    assert version.stdout.strip().startswith(floor + "."), version.stdout + version.stderr
    suite = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not minilm",
         "tests/engine/test_parity.py", "tests/engine/test_tokenize.py", "tests/engine/test_families.py",
         "tests/training/test_train.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    assert suite.returncode == 0, suite.stdout[-3000:] + suite.stderr[-2000:]
    assert " passed" in suite.stdout and " failed" not in suite.stdout
