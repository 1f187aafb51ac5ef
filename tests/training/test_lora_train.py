"""`prefix-server train --method lora` (and `lora+prefix`) on the tiny backbone: what is trained is what
is served (the training model against the exported artifact through the engine, 1e-5), the adapter is
PEFT's LoRA (the artifact equals PeftModel holding the trained weights), sentence and token heads, the
SPEC 1c artifact and the command's flags."""

from __future__ import annotations

import argparse

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from server.artifact import HeadKind, read_artifact_file
from server.artifact.lora import LORA_MODULES
from server.commands import train as train_command
from tests.training.test_token_train import word_rows, write_jsonl
from tests.training.tiny_data import single_label_rows, write_rows
from training import TrainConfig, train
from training.token_trainer import train_token

TEXTS = ["great film", ("the plot was dull", "and boring"), "a " * 150, "charming"]


def _config(tmp_path, **overrides) -> TrainConfig:
    defaults = dict(steps=6, batch_size=8, lr=1e-2, seed=1, method="lora", lora_rank=4, lora_alpha=8.0)
    return TrainConfig(
        train=write_rows(tmp_path / "train.jsonl", single_label_rows(40)),
        eval=write_rows(tmp_path / "eval.jsonl", single_label_rows(12, seed=1)),
        **{**defaults, **overrides},
    )


@pytest.mark.parametrize(("method", "targets"), [("lora", ("attention.self.query", "attention.self.value")),
                                                 ("lora+prefix", LORA_MODULES)])
def test_the_trained_adapter_serves_like_the_training_model(tiny_engine, tmp_path, method, targets):
    result = train(_config(tmp_path, method=method, lora_targets=targets, prefix_len=3), tiny_engine, progress=False)
    artifact = result.artifact
    assert artifact.format_version == "3" and artifact.prefix_len == (3 if method == "lora+prefix" else 0)
    assert {module for _, module in artifact.lora.modules} == set(targets)
    assert any(b.abs().max() > 0 for _, b in artifact.lora.modules.values()), "B starts at zero and must have moved"
    assert artifact.extra_metadata["method"] == method and artifact.extra_metadata["lora_rank"] == "4"
    handle = tiny_engine.load(artifact)
    encoded = tiny_engine.encode(TEXTS, artifact.prefix_len)
    served = tiny_engine.score_encoded([(e, handle) for e in encoded])
    result.model.eval()
    for row, expected in zip(encoded, served):
        ids = torch.tensor([row.input_ids])
        trained = result.model.scores(ids, torch.tensor([row.token_type_ids]), torch.ones_like(ids, dtype=torch.bool),
                                      artifact.problem_type)
        assert max(abs(a - b) for a, b in zip(trained[0].tolist(), expected)) <= 1e-5


def test_the_trained_adapter_is_what_peft_computes(tiny_engine, tiny_backbone_dir, tmp_path):
    """The trained weights put into PEFT's own LoRA (r, alpha, targets as trained) give the same scores."""
    result = train(_config(tmp_path, lora_targets=("attention.self.query", "output.dense")), tiny_engine, progress=False)
    artifact = result.artifact
    model = AutoModelForSequenceClassification.from_pretrained(tiny_backbone_dir, num_labels=2, attn_implementation="eager")
    peft_model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["query", "output.dense"]))
    with torch.no_grad():
        for (layer, module), (a, b) in artifact.lora.modules.items():
            linear = peft_model.base_model.model.bert.encoder.layer[layer].get_submodule(module)
            linear.lora_A["default"].weight.copy_(a)
            linear.lora_B["default"].weight.copy_(b)
        peft_model.base_model.model.classifier.modules_to_save["default"].weight.copy_(artifact.classifier_weight)
        peft_model.base_model.model.classifier.modules_to_save["default"].bias.copy_(artifact.classifier_bias)
    peft_model.eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_backbone_dir)
    handle = tiny_engine.load(artifact)
    for text in TEXTS:
        pair = (text,) if isinstance(text, str) else text
        with torch.no_grad():
            expected = peft_model(**tokenizer(*pair, truncation=True, max_length=128, return_tensors="pt")).logits[0].softmax(-1)
        served = tiny_engine.score_encoded([(tiny_engine.encode([text], 0)[0], handle)])[0]
        assert max(abs(a - b) for a, b in zip(served, expected.tolist())) <= 1e-5


def test_a_token_head_with_lora(tiny_engine, tmp_path):
    config = TrainConfig(
        train=write_jsonl(tmp_path / "train.jsonl", word_rows(40)), eval=write_jsonl(tmp_path / "eval.jsonl", word_rows(12, 1)),
        steps=4, batch_size=8, lr=1e-2, seed=1, method="lora", lora_rank=2, lora_targets=LORA_MODULES,
    )
    result = train_token(config, tiny_engine, progress=False)
    assert result.artifact.head is HeadKind.TOKEN and result.artifact.key_values is None
    assert "f1" in result.metrics


def test_the_command_takes_the_lora_flags(tiny_backbone_dir, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    train_command.register(parser.add_subparsers())
    out = tmp_path / "lora.safetensors"
    data = write_rows(tmp_path / "train.jsonl", single_label_rows(24))
    common = ["--train", str(data), "--backbone", str(tiny_backbone_dir), "--steps", "2", "--batch-size", "8", "--quiet"]
    args = parser.parse_args(["train", *common, "--out", str(out), "--method", "lora", "--lora-rank", "3",
                              "--lora-alpha", "6", "--lora-targets", "value,intermediate.dense"])
    assert args.func(args) == 0
    artifact = read_artifact_file(out, args_shape(tiny_backbone_dir))
    assert artifact.lora.scaling == 2.0 and artifact.lora.rank(0, "intermediate.dense") == 3
    assert "LoRA r=3 on 4 Linears" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        parser.parse_args(["train", *common, "--out", str(out), "--lora-targets", "pooler.dense"])
    assert "--lora-targets" in capsys.readouterr().err
    args = parser.parse_args(["train", *common, "--out", str(out), "--method", "lora", "--lora-rank", "65"])
    assert args.func(args) == 2
    assert "--lora-rank: expected 1..64, got 65" in capsys.readouterr().err


def args_shape(folder):
    from server.engine.backbone import read_backbone_folder

    return read_backbone_folder(folder).shape()
