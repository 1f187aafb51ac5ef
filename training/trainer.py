"""`prefix-server train`'s engine room: the training loop, the export, and the evaluation.

The evaluation scores the exported artifact through `Engine.score`, the server's own scoring path,
with the server's tokenisation, so the metrics written into the artifact are what serving gives.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from server.artifact import PrefixArtifact, ProblemType, artifact_to_bytes, read_artifact
from server.artifact.lora import ADAPTATIONS, DEFAULT_TARGETS, MAX_RANK
from server.engine import Engine
from server.engine.backbone import DTYPES, default_backbone_dir
from server.engine.scoring import MULTI_LABEL_THRESHOLD
from training import metrics as metric_fns
from training.batches import EncodedSet, epoch_batches, eval_batches
from training.data import Dataset, load_dataset
from training.lora_adapter import TrainableLora
from training.model import PrefixClassifier, loss_fn
from training.prefix_encoder import PrefixEncoder

DEFAULT_EPOCHS = 3.0
EVAL_BATCH_SIZE = 64


@dataclass
class TrainConfig:
    train: Path
    eval: Path | None = None
    backbone: Path | None = None  # None: the embedded MiniLM
    labels: tuple[str, ...] | None = None
    problem_type: ProblemType | None = None
    prefix_len: int = 16
    projection: bool = False
    projection_hidden: int = 512
    steps: int | None = None
    epochs: float | None = None  # DEFAULT_EPOCHS when neither is set
    batch_size: int = 32
    lr: float = 1e-2
    weight_decay: float = 0.0
    warmup_ratio: float = 0.06
    max_grad_norm: float = 1.0
    max_length: int = 128
    doc_stride: int = 128  # span heads: context tokens consecutive training windows share
    dropout: float | None = None  # None: the backbone's hidden_dropout_prob
    seed: int = 42
    dtype: str = "float32"  # of prefix.key_values in the artifact
    method: str = "prefix"  # what is trained besides the head: one of ADAPTATIONS
    lora_rank: int = 8
    lora_alpha: float = 16.0  # scaling = alpha / rank, as PEFT's
    lora_targets: tuple[str, ...] = DEFAULT_TARGETS
    lora_dropout: float = 0.1

    @property
    def uses_prefix(self) -> bool:
        return self.method in ("prefix", "lora+prefix")

    @property
    def uses_lora(self) -> bool:
        return self.method in ("lora", "lora+prefix")

    @property
    def served_prefix_len(self) -> int:
        """P of the exported task (0 without a prefix)."""
        return self.prefix_len if self.uses_prefix else 0


@dataclass
class TrainResult:
    artifact: PrefixArtifact
    model: PrefixClassifier  # a PrefixTokenClassifier for a token head
    metrics: dict = field(default_factory=dict)
    steps: int = 0
    seconds: float = 0.0


def train(config: TrainConfig, engine: Engine | None = None, progress: bool = True) -> TrainResult:
    """Trains, exports and evaluates; raises DataError or ValueError on bad input."""
    _check_config(config)
    torch.manual_seed(config.seed)
    engine = engine or Engine.from_folder(config.backbone or _default_backbone())
    check_prefix_len(config, engine)
    train_set = load_dataset(config.train, config.labels, config.problem_type)
    eval_set = load_dataset(config.eval, train_set.labels, train_set.problem_type) if config.eval else None
    max_tokens = min(config.max_length, engine.shape.max_tokens(config.served_prefix_len))
    encoded = EncodedSet.build(train_set, engine.encoder, max_tokens)
    model = build_model(engine, config, len(train_set.labels))
    steps = _total_steps(config, len(train_set))
    started = time.perf_counter()
    _run_steps(model, encoded, train_set.problem_type, config, steps, progress)
    seconds = time.perf_counter() - started
    artifact = export_artifact(model, train_set, config, engine)
    metrics = evaluate(engine, artifact, eval_set) if eval_set is not None else {}
    metadata = _metadata(config, train_set, eval_set, steps, seconds, engine, metrics)
    artifact = replace(artifact, extra_metadata=metadata)
    read_artifact(artifact_to_bytes(artifact), engine.shape)  # what we write must load; raises if not
    return TrainResult(artifact, model, metrics, steps, seconds)


def check_prefix_len(config: TrainConfig, engine: Engine) -> None:
    if config.uses_prefix and not 1 <= config.prefix_len <= engine.shape.max_prefix_len:
        raise ValueError(f"--prefix-len: expected 1..{engine.shape.max_prefix_len}, got {config.prefix_len}")


def build_model(engine: Engine, config: TrainConfig, num_labels: int, kind: type = PrefixClassifier) -> PrefixClassifier:
    """A fresh prefix and/or LoRA adapter (config.method) and head on the engine's frozen backbone;
    `kind` PrefixTokenClassifier for a token head."""
    g = engine.files.geometry
    encoder = None
    if config.uses_prefix:
        encoder = PrefixEncoder(config.prefix_len, g.num_layers, g.hidden_size, config.projection, config.projection_hidden)
    lora = None
    if config.uses_lora:
        lora = TrainableLora(g, config.lora_rank, config.lora_alpha, config.lora_targets, config.lora_dropout)
    dropout = config.dropout if config.dropout is not None else _backbone_dropout(engine)
    return kind(engine.model, encoder, num_labels, dropout, lora)


def exported_adaptation(model: PrefixClassifier, config: TrainConfig) -> dict:
    """The trained prefix (folded once into --dtype) and LoRA weights, as PrefixArtifact fields."""
    model.eval()
    with torch.no_grad():
        key_values = model.key_values().to(DTYPES[config.dtype]).contiguous() if config.uses_prefix else None  # [L, 2, H, P, D]
    return {"key_values": key_values, "lora": model.lora.weights() if config.uses_lora else None}


def export_artifact(model: PrefixClassifier, train_set: Dataset, config: TrainConfig, engine: Engine) -> PrefixArtifact:
    """Folds the reparameterisation once into prefix.key_values; the head stays float32."""
    return PrefixArtifact(
        **exported_adaptation(model, config),
        classifier_weight=model.classifier.weight.detach().float().clone(),
        classifier_bias=model.classifier.bias.detach().float().clone(),
        problem_type=train_set.problem_type,
        labels=train_set.labels,
        backbone_fingerprint=engine.shape.fingerprint,
    )


def evaluate(engine: Engine, artifact: PrefixArtifact, dataset: Dataset) -> dict:
    """Scores `dataset` through the server's path (tokeniser, engine, heads) and computes the metrics."""
    handle = engine.load(artifact)
    encoded = engine.encode(dataset.inputs, artifact.prefix_len, truncate=True)
    scores = np.zeros((len(encoded), artifact.num_labels))  # [N, C]
    for indices in eval_batches([len(e) for e in encoded], EVAL_BATCH_SIZE):
        scores[indices] = engine.score_encoded([(encoded[i], handle) for i in indices])
    targets = dataset.targets.numpy()
    if dataset.problem_type is ProblemType.SINGLE_LABEL:
        return metric_fns.single_label_metrics(targets, scores.argmax(axis=1), dataset.labels)
    if dataset.problem_type is ProblemType.MULTI_LABEL:
        return metric_fns.multi_label_metrics(targets > 0.5, scores >= MULTI_LABEL_THRESHOLD, dataset.labels)
    return metric_fns.regression_metrics(targets[:, 0], scores[:, 0])


def _run_steps(model, encoded, problem_type, config: TrainConfig, steps: int, progress: bool, loss=None) -> None:
    """`loss(logits, targets)`: the token trainer's; None is the sentence heads' loss_fn for problem_type."""
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=config.lr, weight_decay=config.weight_decay)
    warmup = int(steps * config.warmup_ratio)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, warmup, steps))
    generator = torch.Generator().manual_seed(config.seed)
    lengths = [len(e) for e in encoded.encoded]
    model.train()
    bar = tqdm(total=steps, unit="step", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    running_loss, rows_done, started = None, 0, time.perf_counter()
    step = 0
    while step < steps:
        for indices in epoch_batches(lengths, config.batch_size, generator):
            if step == steps:
                break
            batch = encoded.batch(indices)
            logits = model(batch.input_ids, batch.token_type_ids, batch.token_mask)
            value = loss(logits, batch.targets) if loss else loss_fn(logits, batch.targets, problem_type)
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), config.max_grad_norm)
            optimizer.step()
            schedule.step()
            step += 1
            rows_done += batch.size
            value = value.item()
            if not math.isfinite(value):
                raise ValueError(f"training diverged at step {step}: loss is {value} (try a lower --lr)")
            running_loss = value if running_loss is None else 0.95 * running_loss + 0.05 * value
            rate = rows_done / (time.perf_counter() - started)
            bar.set_postfix(loss=f"{running_loss:.4f}", rows_s=f"{rate:.0f}", refresh=False)
            bar.update(1)
    bar.close()
    model.eval()


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def _total_steps(config: TrainConfig, num_rows: int) -> int:
    if config.steps is not None:
        return config.steps
    epochs = config.epochs if config.epochs is not None else DEFAULT_EPOCHS
    return max(1, math.ceil(epochs * math.ceil(num_rows / config.batch_size)))


def _check_config(config: TrainConfig) -> None:
    if config.steps is not None and config.epochs is not None:
        raise ValueError("expected --steps or --epochs, got both")
    checks = [
        ("--steps", config.steps, config.steps is None or config.steps >= 1, ">= 1"),
        ("--epochs", config.epochs, config.epochs is None or config.epochs > 0, "> 0"),
        ("--batch-size", config.batch_size, config.batch_size >= 1, ">= 1"),
        ("--lr", config.lr, config.lr > 0, "> 0"),
        ("--max-length", config.max_length, config.max_length >= 3, ">= 3"),
        ("--projection-hidden", config.projection_hidden, config.projection_hidden >= 1, ">= 1"),
        ("--dtype", config.dtype, config.dtype in DTYPES, f"one of {sorted(DTYPES)}"),
        ("--method", config.method, config.method in ADAPTATIONS, f"one of {list(ADAPTATIONS)}"),
        ("--lora-rank", config.lora_rank, 1 <= config.lora_rank <= MAX_RANK, f"1..{MAX_RANK}"),
        ("--lora-alpha", config.lora_alpha, config.lora_alpha > 0, "> 0"),
        ("--lora-dropout", config.lora_dropout, 0 <= config.lora_dropout < 1, "in [0, 1)"),
    ]
    for flag, value, ok, expected in checks:
        if not ok:
            raise ValueError(f"{flag}: expected {expected}, got {value}")


def _metadata(config, train_set, eval_set, steps, seconds, engine, metrics) -> dict[str, str]:
    meta = {
        "trainer": "prefix-server train",
        "trained_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "backbone_name": engine.files.name,
        "train_data": train_set.source.name,
        "train_data_sha256": _sha256(train_set.source),
        "train_rows": str(len(train_set)),
        "steps": str(steps),
        "epochs": f"{steps * config.batch_size / len(train_set):.2f}",
        "batch_size": str(config.batch_size),
        "lr": repr(config.lr),
        "seed": str(config.seed),
        "max_length": str(config.max_length),
        "train_seconds": f"{seconds:.1f}",
        "method": config.method,
    }
    if config.uses_prefix:
        meta["prefix_projection"] = "true" if config.projection else "false"
    if config.uses_lora:
        meta.update(lora_rank=str(config.lora_rank), lora_alpha=repr(config.lora_alpha),
                    lora_targets=",".join(config.lora_targets), lora_dropout=repr(config.lora_dropout))
    if config.projection and config.uses_prefix:
        meta["projection_hidden"] = str(config.projection_hidden)
    if eval_set is not None:
        meta.update(eval_data=eval_set.source.name, eval_rows=str(len(eval_set)))
    for name, value in metrics.items():
        if isinstance(value, dict):  # F1 per label
            meta[f"eval_{name}"] = json.dumps({k: round(v, 4) for k, v in value.items()})
        else:
            meta[f"eval_{name}"] = f"{value:.4f}"
    return meta


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _backbone_dropout(engine: Engine) -> float:
    config_path = Path(engine.files.folder) / "config.json"
    return float(json.loads(config_path.read_text()).get("hidden_dropout_prob", 0.1))


def _default_backbone() -> Path:
    return default_backbone_dir()

