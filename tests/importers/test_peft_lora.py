"""PEFT `LORA` adapters (SPEC 1c), made here with `get_peft_model(...).save_pretrained`: what the
importer keeps (A as saved, B with the module's PEFT scaling folded in where it differs from the
artifact's `lora_scaling`), both families' heads, the folder, the zip and the command line, and every
refusal, each naming the field or tensor. (Values against PeftModel: tests/engine/test_lora.py.)"""

from __future__ import annotations

import argparse
import json
import math
import re

import pytest
import torch
from safetensors.torch import load_file

from harness.random_backbone import write_random_backbone, write_random_roberta_backbone
from server.artifact import HeadKind, read_artifact, read_artifact_file
from server.commands import import_checkpoint as import_command
from server.importers import CheckpointError, convert_peft_zip, import_checkpoint
from tests.lora_helpers import ALL_LINEAR, make_peft_adapter, zip_folder

PREFIX = "base_model.model.bert.encoder.layer"


@pytest.fixture(scope="module")
def roberta_dir(tmp_path_factory):
    return write_random_roberta_backbone(tmp_path_factory.mktemp("tiny-roberta"))


def saved(adapter, layer: int, module: str) -> tuple[torch.Tensor, torch.Tensor]:
    state = load_file(adapter / "adapter_model.safetensors")
    return state[f"{PREFIX}.{layer}.{module}.lora_A.weight"], state[f"{PREFIX}.{layer}.{module}.lora_B.weight"]


def test_scalings_of_rank_and_alpha_patterns_are_kept(tiny_engine, tiny_backbone_dir, tmp_path):
    adapter = make_peft_adapter(
        tiny_backbone_dir, tmp_path / "a", r=4, lora_alpha=8, target_modules=ALL_LINEAR,
        rank_pattern={"value": 2}, alpha_pattern={"layer.1.attention.self.query": 3},
    )
    artifact = import_checkpoint(adapter, tiny_engine.shape)
    assert artifact.format_version == "3" and artifact.key_values is None and artifact.lora.scaling == 2.0
    assert artifact.extra_metadata["source_format"] == "peft-lora"
    expected_scaling = {"attention.self.value": 8 / 2, "attention.self.query": 8 / 4}
    for layer in range(2):
        for module in ("attention.self.query", "attention.self.value", "output.dense"):
            a, b = saved(adapter, layer, module)
            scaling = 3 / 4 if (layer, module) == (1, "attention.self.query") else expected_scaling.get(module, 2.0)
            got_a, got_b = artifact.lora.modules[(layer, module)]
            assert torch.equal(got_a, a)
            assert torch.allclose(got_b * artifact.lora.scaling, b * scaling, rtol=1e-6, atol=0)


def test_rslora_scales_by_the_square_root_of_the_rank(tiny_engine, tiny_backbone_dir, tmp_path):
    adapter = make_peft_adapter(tiny_backbone_dir, tmp_path / "a", r=9, lora_alpha=6, use_rslora=True)
    assert import_checkpoint(adapter, tiny_engine.shape).lora.scaling == pytest.approx(6 / math.sqrt(9))


def test_roberta_heads_and_token_heads(roberta_dir, tmp_path):
    from server.engine.backbone import read_backbone_folder

    shape = read_backbone_folder(roberta_dir).shape()
    sequence = import_checkpoint(make_peft_adapter(roberta_dir, tmp_path / "s", num_labels=2), shape)
    assert sequence.pooler_weight is not None and sequence.classifier_weight.shape == (2, 32)  # dense -> own pooler
    assert sequence.backbone_family == "roberta" and sequence.head is HeadKind.SEQUENCE
    token = import_checkpoint(make_peft_adapter(roberta_dir, tmp_path / "t", HeadKind.TOKEN, num_labels=5), shape)
    assert token.head is HeadKind.TOKEN and token.pooler_weight is None and token.num_labels == 5


def test_the_zip_converts_as_the_folder_does(tiny_engine, tiny_backbone_dir, tmp_path):
    adapter = make_peft_adapter(tiny_backbone_dir, tmp_path / "my-adapter", r=3)
    from_zip = read_artifact(convert_peft_zip(zip_folder(adapter), tiny_engine.shape, labels=["a", "b", "c"]), tiny_engine.shape)
    from_folder = import_checkpoint(adapter, tiny_engine.shape, labels=("a", "b", "c"))
    assert from_zip.labels == ("a", "b", "c")
    for key, (a, b) in from_folder.lora.modules.items():
        assert torch.equal(from_zip.lora.modules[key][0], a) and torch.equal(from_zip.lora.modules[key][1], b)


def test_import_command(tiny_engine, tiny_backbone_dir, tmp_path, capsys):
    adapter = make_peft_adapter(tiny_backbone_dir, tmp_path / "adapter", HeadKind.TOKEN, r=2)
    parser = argparse.ArgumentParser()
    import_command.register(parser.add_subparsers())
    out = tmp_path / "task.safetensors"
    args = parser.parse_args(["import", str(adapter), "--out", str(out), "--backbone", str(tiny_backbone_dir)])
    assert args.func(args) == 0
    assert read_artifact_file(out, tiny_engine.shape).lora.rank(1, "attention.self.value") == 2
    assert "LoRA rank 2 on attention.self.query, attention.self.value" in capsys.readouterr().out


def _edit_config(adapter, **changes):
    path = adapter / "adapter_config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))
    return adapter


REFUSALS = [
    (dict(use_dora=True), "use_dora expected false"),
    (dict(bias="all"), "bias expected 'none', got 'all'"),
    (dict(bias="lora_only"), "bias expected 'none', got 'lora_only'"),
    (dict(target_modules=["word_embeddings"]), "LoRA on an embedding"),
    (dict(target_modules=["query", "dense"]), "LoRA on 'pooler.dense', expected one of the layers'"),
    (dict(r=65), "rank r expected 1..64, got 65"),
    (dict(lora_bias=True), "lora_bias expected unset"),
    (dict(modules_to_save=["classifier", "pooler"]), "other trained modules"),
]


@pytest.mark.parametrize(("options", "message"), REFUSALS, ids=[m for _, m in REFUSALS])
def test_what_cannot_be_served_is_refused(tiny_engine, tiny_backbone_dir, tmp_path, options, message):
    adapter = make_peft_adapter(tiny_backbone_dir, tmp_path / "adapter", **options)
    with pytest.raises(CheckpointError, match=re.escape(message)):
        import_checkpoint(adapter, tiny_engine.shape)
    with pytest.raises(CheckpointError, match=re.escape(message)):
        convert_peft_zip(zip_folder(adapter), tiny_engine.shape)


def test_question_answering_lora_is_refused_on_bert(tiny_engine, tiny_backbone_dir, tmp_path):
    adapter = make_peft_adapter(tiny_backbone_dir, tmp_path / "adapter", HeadKind.SPAN, num_labels=2)
    with pytest.raises(CheckpointError, match="QUESTION_ANS with LoRA expected a RoBERTa backbone, got bert"):
        import_checkpoint(adapter, tiny_engine.shape)


def test_dora_tensors_are_refused_whatever_the_config_says(tiny_engine, tiny_backbone_dir, tmp_path):
    adapter = _edit_config(make_peft_adapter(tiny_backbone_dir, tmp_path / "adapter", use_dora=True), use_dora=False)
    with pytest.raises(CheckpointError, match="lora_magnitude_vector: a DoRA magnitude"):
        import_checkpoint(adapter, tiny_engine.shape)


def test_shapes_of_another_backbone_are_refused(tiny_engine, tmp_path):
    other = write_random_backbone(tmp_path / "wider", hidden_size=48, num_heads=4, intermediate_size=96)
    adapter = make_peft_adapter(other, tmp_path / "adapter")
    with pytest.raises(CheckpointError, match=re.escape("lora_A.weight: expected shape [r, 32] for this backbone, got [4, 48]")):
        import_checkpoint(adapter, tiny_engine.shape)


def test_a_roberta_adapter_on_a_bert_server_is_refused(tiny_engine, roberta_dir, tmp_path):
    adapter = make_peft_adapter(roberta_dir, tmp_path / "adapter")
    with pytest.raises(CheckpointError, match="expected a checkpoint of this server's 'bert' backbone family, got 'roberta'"):
        import_checkpoint(adapter, tiny_engine.shape)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(r=5), "r / rank_pattern says rank 5, the tensors have rank 4"),
        (dict(task_type="CAUSAL_LM"), "task_type expected SEQ_CLS, TOKEN_CLS or QUESTION_ANS, got 'CAUSAL_LM'"),
        (dict(lora_alpha="8"), "lora_alpha / alpha_pattern expected a number, got '8'"),
        (dict(layer_replication=[[0, 1]]), "layer_replication expected unset"),
    ],
)
def test_configs_that_disagree_with_the_tensors_are_refused(tiny_engine, tiny_backbone_dir, tmp_path, changes, message):
    adapter = _edit_config(make_peft_adapter(tiny_backbone_dir, tmp_path / "adapter"), **changes)
    with pytest.raises(CheckpointError, match=re.escape(message)):
        import_checkpoint(adapter, tiny_engine.shape)
