"""The device check of what the engine gained after the GPU path was built (issue 24): LoRA rows (issue 21,
whose GPU form, `blocks`, had run only on the CPU) and the span and choice heads (issue 22) mixed with
prefix rows of every head in one batch on CUDA, against the same batch on the CPU in float32 and each row
alone on CUDA. Seconds on one GPU.

    python scripts/gpu_mixed_check.py --out $OUT     # on the device machine: writes gpu_mixed_check.json
    python scripts/gpu_mixed_check.py --device cpu   # here: the same logic, CPU against CPU

A random BERT (harness/cuda_checks.write_bert), float32 with TF32 off within 1e-4 of the CPU, float16
within 2e-2; the same top output at every row and token (near ties within the tolerance left out and
counted); every attention path the GPU runs, both LoRA modes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.lora_tasks import lora_artifact  # noqa: E402
from harness import cuda_checks  # noqa: E402
from server.artifact import HeadKind, artifact_to_bytes  # noqa: E402
from server.artifact.lora import parse_targets  # noqa: E402
from server.engine import Engine, TokenBatch, read_backbone_folder  # noqa: E402
from server.engine.scoring import default_score_function  # noqa: E402

QV, ALL = parse_targets("query,value"), parse_targets("all")
TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-2}


def tasks(shape) -> dict:
    """Every head, with a prefix only, a LoRA only, or both."""
    def head(artifact, kind, labels):
        return dataclasses.replace(artifact, head=kind, classifier_weight=artifact.classifier_weight[:labels],
                                   classifier_bias=artifact.classifier_bias[:labels], labels=artifact.labels[:labels])

    seq = lambda seed, rank=0, targets=QV, p=0: lora_artifact(shape, seed, max(rank, 1), targets, 3, p)  # noqa: E731
    out = {
        "prefix seq": dataclasses.replace(seq(1, p=5), lora=None),
        "prefix token": head(dataclasses.replace(seq(2, p=3), lora=None), HeadKind.TOKEN, 3),
        "prefix span": head(dataclasses.replace(seq(3, p=4), lora=None), HeadKind.SPAN, 2),
        "prefix choice": head(dataclasses.replace(seq(4, p=6), lora=None), HeadKind.CHOICE, 1),
        "lora seq": seq(5, rank=4),
        "lora+prefix token": head(seq(6, rank=8, targets=ALL, p=6), HeadKind.TOKEN, 3),
        "lora span": head(seq(7, rank=2, targets=ALL), HeadKind.SPAN, 2),
        "lora+prefix choice": head(seq(8, rank=16, targets=parse_targets("value,intermediate.dense"), p=2), HeadKind.CHOICE, 1),
    }
    return out


def scores(engine: Engine, handles: dict, plan: list, inputs) -> list[np.ndarray]:
    batch = TokenBatch.of(
        [inputs[i] for _, i in plan], [handles[name] for name, _ in plan], [HEADS[name] for name, _ in plan],
        [default_score_function(HEADS[name], PROBLEMS[name]) for name, _ in plan],
    )
    return [np.asarray(s, dtype=np.float64) for s in engine.score(batch).split(batch, [LABELS[name] for name, _ in plan])]


HEADS, PROBLEMS, LABELS = {}, {}, {}


def load(engine: Engine, artifacts: dict) -> dict:
    handles = {}
    for i, (name, artifact) in enumerate(artifacts.items()):
        handles[name] = 1000 + i
        engine.load_task(handles[name], artifact_to_bytes(artifact))
        HEADS[name], PROBLEMS[name], LABELS[name] = artifact.head, artifact.problem_type, len(artifact.labels)
    return handles


def check(folder: Path, device: str, dtype: torch.dtype, attention: str, mode: str, reference: list, plan, inputs, artifacts) -> dict:
    engine = Engine(read_backbone_folder(folder), None, device, dtype, attention=attention)
    engine.lora_mode = mode
    handles = load(engine, artifacts)
    mixed = scores(engine, handles, plan, inputs)
    alone = [scores(engine, handles, [row], inputs)[0] for row in plan]
    vs_cpu = max(float(np.abs(m - r).max()) for m, r in zip(mixed, reference))
    vs_alone = max(float(np.abs(m - a).max()) for m, a in zip(mixed, alone))
    flips, ties = argmax_flips(mixed, reference, TOLERANCE[dtype])
    ok = vs_cpu <= TOLERANCE[dtype] and vs_alone <= TOLERANCE[dtype] and flips == 0
    return {"dtype": str(dtype).removeprefix("torch."), "attention": attention, "lora_mode": mode, "rows": len(plan),
            "max_diff_vs_cpu_float32": vs_cpu, "max_diff_mixed_vs_alone": vs_alone, "argmax_flips": flips,
            "near_ties_not_counted": ties, "ok": ok}


def argmax_flips(got: list[np.ndarray], reference: list[np.ndarray], tolerance: float) -> tuple[int, int]:
    """Positions (rows, or tokens of token and span rows) whose top output differs from the reference's,
    leaving out near ties: positions whose reference top two are closer than `tolerance`, which any
    rounding within the tolerance may swap (random heads have a few)."""
    flips = ties = 0
    for g, r in zip(got, reference):
        g, r = g.reshape(-1, g.shape[-1]), r.reshape(-1, r.shape[-1])  # [positions, outputs]
        if r.shape[-1] < 2:
            continue
        top_two = np.sort(r, axis=-1)[:, -2:]  # [positions, 2]
        tie = (top_two[:, 1] - top_two[:, 0]) < tolerance
        ties += int(tie.sum())
        flips += int(((g.argmax(-1) != r.argmax(-1)) & ~tie).sum())
    return flips, ties


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu-mixed-check")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = cuda_checks.write_bert(Path(tmp) / "bert")
        shape = read_backbone_folder(folder).shape()
        artifacts = tasks(shape)
        inputs = cuda_checks.make_inputs(24, seed=3)
        rng = np.random.default_rng(0)
        plan = [(name, int(i)) for name in artifacts for i in rng.choice(len(inputs), size=4, replace=False)]
        rng.shuffle(plan)
        cpu = Engine(read_backbone_folder(folder), None, "cpu", torch.float32, attention="sdpa")
        reference = scores(cpu, load(cpu, artifacts), plan, inputs)
        dtypes = [torch.float32, torch.float16] if args.device.startswith("cuda") else [torch.float32]
        for dtype in dtypes:
            for attention in cuda_checks.available_paths(args.device, dtype):
                for mode in ("runs", "blocks"):
                    try:
                        results.append(check(folder, args.device, dtype, attention, mode, reference, plan, inputs, artifacts))
                    except Exception as error:  # noqa: BLE001 — reported as a failed check, the others still run
                        results.append({"dtype": str(dtype), "attention": attention, "lora_mode": mode, "ok": False,
                                        "error": f"{type(error).__name__}: {error}"})
    report = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
              "torch": torch.__version__, "tasks": list(artifacts), "checks": results,
              "passed": sum(r["ok"] for r in results), "of": len(results)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_mixed_check.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 0 if report["passed"] == report["of"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
