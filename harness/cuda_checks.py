"""Checks of the GPU path against transformers, shared by tests/engine/test_cuda.py (`pytest -m cuda`)
and scripts/gpu_check.py, which runs them on a device machine that may lack pytest: so no pytest here,
and no tokenizer (token ids are drawn at random). Each check raises AssertionError saying what differed
and returns its figures. On the CPU (the gpu_check smoke run) they run the sdpa path in float32.
"""

from __future__ import annotations

import inspect
import os
import random
from pathlib import Path

import numpy as np
import torch
from transformers import BertConfig, BertModel, DynamicCache

from server.artifact import PrefixArtifact, ProblemType
from server.engine import EncodedInput, Engine, read_backbone_folder

KINDS = [ProblemType.SINGLE_LABEL, ProblemType.MULTI_LABEL, ProblemType.REGRESSION]
# Scores of a half-precision engine against the float32 reference: the layers round to 8 (bfloat16)
# or 11 (float16) bits, the pooler and heads run in float32.
HALF_TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 3e-2}


def write_bert(folder: Path, hidden: int = 128, layers: int = 2, heads: int = 4, seed: int = 0) -> Path:
    """A random BERT (512 positions, no tokenizer) saved as a model folder."""
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=1000, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=4 * hidden, max_position_embeddings=512)
    BertModel(config, add_pooling_layer=True).save_pretrained(folder, safe_serialization=True)
    return folder


def make_tasks(shape, count: int, seed: int = 0) -> list[PrefixArtifact]:
    """Tasks with P in 1..64, 1 to 5 labels, all three problem types."""
    gen = torch.Generator().manual_seed(seed)
    tasks = []
    for i in range(count):
        P, labels = 1 + (i * 37) % 64, 1 + i % 5
        kv = torch.randn(shape.num_layers, 2, shape.num_heads, P, shape.head_dim, generator=gen)
        tasks.append(PrefixArtifact(kv, torch.randn(labels, shape.hidden_size, generator=gen) * 0.5,
                                    torch.randn(labels, generator=gen) * 0.1, KINDS[i % 3],
                                    tuple(f"l{j}" for j in range(labels))))
    return tasks


def make_inputs(count: int, seed: int = 0, vocab: int = 1000) -> list[EncodedInput]:
    """Lengths 2..130 (rows shorter and longer than the kernel's blocks), [CLS] first, pairs now and then."""
    rng = random.Random(seed)
    inputs = []
    for _ in range(count):
        n = rng.choice([2, 3, 9, 16, 17, 30, 47, 64, 65, 100, 130])
        ids = [101] + [rng.randrange(200, vocab) for _ in range(n - 2)] + [102]
        split = rng.randrange(1, n) if rng.random() < 0.3 else n
        inputs.append(EncodedInput(np.array(ids, np.int32), np.array([0] * split + [1] * (n - split), np.int8)))
    return inputs


@torch.no_grad()
def reference_scores(model: BertModel, task: PrefixArtifact, encoded: EncodedInput) -> list[float]:
    """The seed's BertPrefixForSequenceClassification: BertModel with the prefix in a DynamicCache."""
    device = next(model.parameters()).device
    ids = torch.from_numpy(encoded.input_ids).long()[None].to(device)  # [1, S]
    types = torch.from_numpy(encoded.token_type_ids).long()[None].to(device)  # [1, S]
    kv = task.key_values.float().to(device)  # [L, 2, H, P, D]
    cache = DynamicCache()
    for layer in range(kv.shape[0]):
        cache.update(kv[layer, 0][None], kv[layer, 1][None], layer)  # each [1, H, P, D]
    mask = torch.ones(1, task.prefix_len + ids.shape[1], dtype=torch.long, device=device)
    # transformers renamed past_key_values to cache in 5.x; the device machine may hold either.
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    out = model(input_ids=ids, token_type_ids=types, attention_mask=mask, **{cache_arg: cache})
    logits = out.pooler_output.float() @ task.classifier_weight.float().T.to(device) + task.classifier_bias.to(device)
    if task.problem_type is ProblemType.SINGLE_LABEL:
        return logits.softmax(-1)[0].tolist()
    if task.problem_type is ProblemType.MULTI_LABEL:
        return logits.sigmoid()[0].tolist()
    return logits[0].tolist()


def _max_diff(a: list[list[float]], b: list[list[float]]) -> float:
    return max(max(abs(x - y) for x, y in zip(p, q)) for p, q in zip(a, b))


def engine_on(folder: Path, device: str, dtype: torch.dtype, attention: str) -> Engine:
    return Engine(read_backbone_folder(folder), None, device, dtype, attention=attention)


def check_parity(folder: Path, device: str, dtype: torch.dtype, attention: str, rows: int = 24) -> dict:
    """Mixed batch vs the transformers reference (float32, TF32 off) and vs each row alone."""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    engine = engine_on(folder, device, dtype, attention)
    reference = BertModel.from_pretrained(folder, attn_implementation="eager").eval().to(device)
    tasks = make_tasks(engine.shape, 10)
    inputs = make_inputs(rows)
    handles = [engine.load(t) for t in tasks]
    batch = [(e, handles[i % len(tasks)]) for i, e in enumerate(inputs)]
    got = engine.score_encoded(batch)
    expected = [reference_scores(reference, tasks[i % len(tasks)], e) for i, e in enumerate(inputs)]
    alone = [engine.score_encoded([row])[0] for row in batch]
    tol = HALF_TOLERANCE[dtype]
    vs_reference, vs_alone = _max_diff(got, expected), _max_diff(got, alone)
    label_flips = sum(
        1 for g, e, task in zip(got, expected, (tasks[i % len(tasks)] for i in range(rows)))
        if task.problem_type is ProblemType.SINGLE_LABEL and len(e) > 1
        and max(range(len(g)), key=g.__getitem__) != max(range(len(e)), key=e.__getitem__)
        and sorted(e)[-1] - sorted(e)[-2] > 2 * tol  # a near tie may flip within the tolerance
    )
    result = {"check": "parity", "dtype": str(dtype).removeprefix("torch."), "attention": engine.attention,
              "max_diff_reference": vs_reference, "max_diff_alone": vs_alone, "label_flips": label_flips,
              "tolerance": tol}
    assert vs_reference <= tol and label_flips == 0, f"expected scores within {tol} of transformers, got {result}"
    assert vs_alone <= tol, f"expected a row batched to score as alone within {tol}, got {result}"
    return result


def check_paths_agree(folder: Path, device: str, dtype: torch.dtype, paths: list[str], rows: int = 24) -> dict:
    """The same batch through each attention path: pooled outputs and scores agree."""
    tasks = make_tasks(read_backbone_folder(folder).shape(), 10, seed=1)
    inputs = make_inputs(rows, seed=1)
    scores = {}
    for path in paths:
        engine = engine_on(folder, device, dtype, path)
        handles = [engine.load(t) for t in tasks]
        scores[path] = engine.score_encoded([(e, handles[i % len(tasks)]) for i, e in enumerate(inputs)])
    diffs = {f"{a}-{b}": _max_diff(scores[a], scores[b]) for a in paths for b in paths if a < b}
    tol = HALF_TOLERANCE[dtype]
    result = {"check": "paths agree", "dtype": str(dtype).removeprefix("torch."), "max_diff": diffs, "tolerance": tol}
    assert all(d <= tol for d in diffs.values()), f"expected the attention paths within {tol}, got {diffs}"
    return result


def available_paths(device: str, dtype: torch.dtype) -> list[str]:
    from server.engine.attention import triton_unavailable_reason, varlen_available

    if not device.startswith("cuda"):  # under TRITON_INTERPRET=1 the kernel runs on the CPU too (slowly)
        interpreted = os.environ.get("TRITON_INTERPRET") == "1" and not triton_unavailable_reason()
        return ["sdpa", "triton"] if interpreted and dtype != torch.bfloat16 else ["sdpa"]
    varlen = varlen_available() and dtype != torch.float32  # FlashAttention 2 runs half precision only
    return [p for p, ok in (("triton", not triton_unavailable_reason()), ("varlen", varlen), ("sdpa", True)) if ok]


def run_all(folder: Path, device: str) -> list[dict]:
    """Every check in every dtype and path the device has, each one's figures or its failure ("error")."""
    dtypes = [torch.float32, torch.float16, torch.bfloat16] if device.startswith("cuda") else [torch.float32]
    checks = []
    for dtype in dtypes:
        paths = available_paths(device, dtype)
        checks += [(check_parity, (folder, device, dtype, path), path) for path in paths]
        checks.append((check_paths_agree, (folder, device, dtype, paths), "all"))
    results = []
    for check, args, path in checks:
        try:
            results.append(check(*args))
        except Exception as exc:  # noqa: BLE001 — the others still run: one report names every failure
            results.append({"check": check.__name__, "dtype": str(args[2]), "attention": path,
                            "error": f"{type(exc).__name__}: {exc}"})
    return results
