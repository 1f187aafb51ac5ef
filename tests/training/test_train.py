"""The trainer on the tiny backbone: train/serve parity, the three problem types end to end, the
seed's prefix layout, determinism."""

from __future__ import annotations

import json

import pytest
import torch

from server.artifact import ProblemType, artifact_to_bytes, read_artifact, read_artifact_file, write_artifact
from server.artifact.layout import flat_to_key_values
from tests.training.tiny_data import multi_label_rows, regression_rows, single_label_rows, write_rows
from training import TrainConfig, train
from training.prefix_encoder import PrefixEncoder

TEXTS = [
    "great film",
    ("the plot was dull", "and boring"),
    "a " * 150,  # longer than the tiny backbone's positions: truncated the same way on both sides
    "charming",
    ("quite", "really quite lovely and fine, a superb story"),
]


def _config(tmp_path, rows, **overrides) -> TrainConfig:
    defaults = dict(steps=6, batch_size=8, prefix_len=5, lr=3e-2, seed=1)
    return TrainConfig(
        train=write_rows(tmp_path / "train.jsonl", rows),
        eval=write_rows(tmp_path / "eval.jsonl", rows[:12]),
        **{**defaults, **overrides},
    )


def test_seed_layout_of_the_prefix():
    """flat_to_key_values equals the seed's get_prompt: view(B, P, 2L, H, D), permute, split(2)."""
    L, H, D, P = 3, 4, 5, 7
    flat = torch.randn(P, 2 * L * H * D)
    seed_pairs = flat[None].view(1, P, 2 * L, H, D).permute([2, 0, 3, 1, 4]).split(2)  # L x [2, 1, H, P, D]
    ours = flat_to_key_values(flat, L, H, D)  # [L, 2, H, P, D]
    for layer, pair in enumerate(seed_pairs):
        assert torch.equal(ours[layer], pair[:, 0])


@pytest.mark.parametrize("projection", [False, True])
def test_trained_artifact_serves_like_the_training_model(tiny_engine, tmp_path, projection):
    config = _config(tmp_path, single_label_rows(40), projection=projection, projection_hidden=16)
    result = train(config, tiny_engine, progress=False)
    artifact = read_artifact(artifact_to_bytes(result.artifact), tiny_engine.shape)
    encoded = tiny_engine.encode(TEXTS, artifact.prefix_len)
    handle = tiny_engine.load(artifact)
    served = tiny_engine.score_encoded([(e, handle) for e in encoded])
    result.model.eval()
    for row, expected in zip(encoded, served):
        ids = torch.tensor([row.input_ids])
        types = torch.tensor([row.token_type_ids])
        trained = result.model.scores(ids, types, torch.ones_like(ids, dtype=torch.bool), artifact.problem_type)
        assert max(abs(a - b) for a, b in zip(trained[0].tolist(), expected)) <= 1e-5
    assert artifact.backbone_fingerprint == tiny_engine.shape.fingerprint


@pytest.mark.parametrize(
    "rows, problem_type, labels, metric",
    [
        (single_label_rows(32), ProblemType.SINGLE_LABEL, ("negative", "positive"), "eval_macro_f1"),
        (multi_label_rows(32), ProblemType.MULTI_LABEL, ("bad", "good"), "eval_micro_f1"),
        (regression_rows(32), ProblemType.REGRESSION, ("score",), "eval_spearman"),
    ],
)
def test_problem_types_end_to_end(tiny_engine, tmp_path, rows, problem_type, labels, metric):
    result = train(_config(tmp_path, rows, dtype="float16"), tiny_engine, progress=False)
    path = tmp_path / "task.safetensors"
    write_artifact(result.artifact, path)
    artifact = read_artifact_file(path, tiny_engine.shape)
    assert artifact.problem_type is problem_type and artifact.labels == labels
    assert artifact.key_values.dtype == torch.float16 and artifact.classifier_weight.dtype == torch.float32
    meta = artifact.extra_metadata
    assert meta["train_rows"] == "32" and meta["steps"] == "6" and meta["train_data"] == "train.jsonl"
    assert meta["prefix_projection"] == "false" and metric in meta and "trained_at" in meta
    encoded = tiny_engine.encode(["great film", ("dull", "plot")], artifact.prefix_len)
    handle = tiny_engine.load(artifact)
    scores = tiny_engine.score_encoded([(e, handle) for e in encoded])
    assert all(len(s) == len(labels) for s in scores)
    if problem_type is ProblemType.SINGLE_LABEL:
        assert sum(scores[0]) == pytest.approx(1.0, abs=1e-5)
        assert set(json.loads(meta["eval_f1_per_label"])) == set(labels)


@pytest.mark.minilm
def test_training_learns_a_separable_task(minilm_engine, tmp_path):
    """The tiny random backbone's pooled output hardly depends on the input, so learning is checked on MiniLM."""
    config = _config(tmp_path, single_label_rows(48), steps=24, batch_size=16, lr=3e-2, prefix_len=4)
    config.eval = write_rows(tmp_path / "held_out.jsonl", single_label_rows(24, seed=7))
    result = train(config, minilm_engine, progress=False)
    assert result.metrics["accuracy"] >= 0.9


def test_same_seed_same_artifact(tiny_engine, tmp_path):
    rows = single_label_rows(24)
    first = train(_config(tmp_path, rows, projection=True, projection_hidden=8), tiny_engine, progress=False)
    again = train(_config(tmp_path, rows, projection=True, projection_hidden=8), tiny_engine, progress=False)
    other = train(_config(tmp_path, rows, projection=True, projection_hidden=8, seed=2), tiny_engine, progress=False)
    assert torch.equal(first.artifact.key_values, again.artifact.key_values)
    assert torch.equal(first.artifact.classifier_weight, again.artifact.classifier_weight)
    assert not torch.equal(first.artifact.key_values, other.artifact.key_values)


def test_prefix_dropout_is_drawn_per_row(tiny_engine):
    """As in the seed, where the prefix is looked up per row before the dropout."""
    from training.model import PrefixClassifier

    g = tiny_engine.files.geometry
    model = PrefixClassifier(tiny_engine.model, PrefixEncoder(4, g.num_layers, g.hidden_size), 2, dropout=0.5)
    seen = []
    original = tiny_engine.model.forward

    def spy(input_ids, token_type_ids, token_mask, prefix_kv, prefix_lens, lora=None):
        seen.append(prefix_kv)
        return original(input_ids, token_type_ids, token_mask, prefix_kv, prefix_lens, lora)

    model.backbone.forward = spy
    try:
        ids = torch.tensor([[101, 2204, 102]] * 2)
        model.train()(ids, torch.zeros_like(ids), torch.ones_like(ids, dtype=torch.bool))
    finally:
        del model.backbone.forward
    kv = seen[0]  # [L, 2, B, H, P, D]
    assert not torch.equal(kv[:, :, 0], kv[:, :, 1])


def test_bad_settings_are_refused(tiny_engine, tmp_path):
    with pytest.raises(ValueError, match=r"--prefix-len: expected 1..126, got 200"):
        train(_config(tmp_path, single_label_rows(8), prefix_len=200), tiny_engine, progress=False)
    with pytest.raises(ValueError, match="expected --steps or --epochs, got both"):
        train(_config(tmp_path, single_label_rows(8), epochs=1.0), tiny_engine, progress=False)
