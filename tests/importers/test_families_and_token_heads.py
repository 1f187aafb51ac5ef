"""Importers of issue 11: P-tuning v2's RobertaPrefixForSequenceClassification (its frozen pooler
becomes the artifact's own), Bert/RobertaPrefixForTokenClassification (token heads), and PEFT
PREFIX_TUNING adapters for RoBERTa SEQ_CLS (classifier.dense -> pooler, out_proj -> classifier) and
TOKEN_CLS. Checkpoints are built with the names and layout the original code saves."""

from __future__ import annotations

import json

import pytest
import torch

from server.artifact import HeadKind, ProblemType, artifact_to_bytes, read_artifact
from server.importers import CheckpointError, convert_peft_files, convert_ptuning_v2, import_checkpoint
from tests.importers.builders import (
    peft_adapter_config,
    peft_files,
    peft_roberta_seq_files,
    ptuning_v2_state_dict,
    random_encoder,
    random_head,
    roberta_backbone_weights,
    roberta_shape,
    seed_past_key_values,
)

P = 5
NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def _prefix(shape, projection=False):
    encoder = random_encoder(shape, P, projection)
    with torch.no_grad():
        output = encoder(torch.arange(P)[None])  # [1, P, 2 * L * hidden]: get_prompt for a batch of one
    return encoder, output


def _assert_prefix_and_head(artifact, output, shape, head):
    assert torch.equal(artifact.key_values, seed_past_key_values(output.float(), shape))  # [L, 2, H, P, D]
    assert torch.equal(artifact.classifier_weight, head[0]) and torch.equal(artifact.classifier_bias, head[1])


def _roundtrip(artifact, shape):
    return read_artifact(artifact_to_bytes(artifact), shape)  # what the server's upload path reads back


@pytest.mark.parametrize("projection", [False, True])
def test_roberta_sequence_checkpoint_keeps_its_pooler(tiny_engine, tmp_path, projection):
    shape = roberta_shape(tiny_engine.shape)
    encoder, output = _prefix(shape, projection)
    head = random_head(shape, 2)
    backbone = roberta_backbone_weights(shape, pooler=True)
    state = ptuning_v2_state_dict(encoder, head, backbone, family="roberta")
    folder = tmp_path / "ckpt"
    folder.mkdir()
    torch.save(state, folder / "pytorch_model.bin")
    config = {"model_type": "roberta", "architectures": ["RobertaPrefixForSequenceClassification"],
              "pre_seq_len": P, "id2label": {"0": "negative", "1": "positive"}}
    (folder / "config.json").write_text(json.dumps(config))
    server_weights = {k: v for k, v in backbone.items() if not k.startswith("pooler.")}
    server_weights["pooler.dense.weight"] = torch.zeros(shape.hidden_size, shape.hidden_size)  # not the task's
    artifact = _roundtrip(import_checkpoint(folder, shape, backbone_weights=server_weights), shape)
    _assert_prefix_and_head(artifact, output, shape, head)
    assert artifact.head is HeadKind.SEQUENCE and artifact.backbone_family == "roberta"
    assert torch.equal(artifact.pooler_weight, backbone["pooler.dense.weight"])
    assert torch.equal(artifact.pooler_bias, backbone["pooler.dense.bias"])
    assert artifact.labels == ("negative", "positive")
    assert artifact.backbone_fingerprint == shape.fingerprint  # roberta.* (pooler aside) matched: pinned


def test_roberta_sequence_checkpoint_without_its_pooler_is_refused(tiny_engine):
    shape = roberta_shape(tiny_engine.shape)
    encoder, _ = _prefix(shape)
    state = ptuning_v2_state_dict(encoder, random_head(shape, 2), family="roberta")
    config = {"architectures": ["RobertaPrefixForSequenceClassification"], "model_type": "roberta"}
    with pytest.raises(CheckpointError, match="expected its pooler"):
        convert_ptuning_v2(state, shape, model_config=config)


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_token_classification_checkpoints(tiny_engine, tiny_backbone_dir, family):
    from server.engine import read_backbone_folder

    shape = tiny_engine.shape if family == "bert" else roberta_shape(tiny_engine.shape)
    encoder, output = _prefix(shape, projection=True)
    head = random_head(shape, len(NER_LABELS))
    if family == "bert":  # BertModel(config, add_pooling_layer=False): the server's weights, pooler dropped
        weights = read_backbone_folder(tiny_backbone_dir).state_dict
        backbone = {k: v for k, v in weights.items() if not k.startswith("pooler.")}
    else:
        backbone = weights = roberta_backbone_weights(shape, pooler=False)
    state = ptuning_v2_state_dict(encoder, head, backbone, family=family)
    config = {"architectures": [f"{family.capitalize()}PrefixForTokenClassification"],
              "id2label": {str(i): name for i, name in enumerate(NER_LABELS)}}
    artifact = _roundtrip(convert_ptuning_v2(state, shape, model_config=config, backbone_weights=weights), shape)
    _assert_prefix_and_head(artifact, output, shape, head)
    assert artifact.head is HeadKind.TOKEN and artifact.pooler_weight is None
    assert artifact.problem_type is ProblemType.SINGLE_LABEL and artifact.labels == tuple(NER_LABELS)
    assert artifact.backbone_family == family and artifact.backbone_fingerprint == shape.fingerprint


def test_token_head_found_without_a_config(tiny_engine):
    """RobertaPrefixForTokenClassification's backbone has no pooler: with no config, that says token."""
    shape = roberta_shape(tiny_engine.shape)
    encoder, _ = _prefix(shape)
    state = ptuning_v2_state_dict(encoder, random_head(shape, 3), roberta_backbone_weights(shape, False), "roberta")
    assert convert_ptuning_v2(state, shape).head is HeadKind.TOKEN
    bert_state = ptuning_v2_state_dict(encoder, random_head(shape, 3))  # no backbone saved: --head decides
    assert convert_ptuning_v2(bert_state, tiny_engine.shape, head_kind=HeadKind.TOKEN).head is HeadKind.TOKEN


def test_a_checkpoint_of_another_family_is_refused(tiny_engine):
    shape = roberta_shape(tiny_engine.shape)
    encoder, _ = _prefix(shape)
    state = ptuning_v2_state_dict(encoder, random_head(shape, 2), roberta_backbone_weights(shape, True), "roberta")
    with pytest.raises(CheckpointError, match="this server's 'bert' backbone family, got 'roberta'"):
        convert_ptuning_v2(state, tiny_engine.shape)


@pytest.mark.parametrize("raw", [False, True])
def test_peft_roberta_sequence_head_becomes_pooler_and_classifier(tiny_engine, raw):
    shape = roberta_shape(tiny_engine.shape)
    _, output = _prefix(shape)
    dense = (torch.randn(shape.hidden_size, shape.hidden_size), torch.randn(shape.hidden_size))
    out_proj = random_head(shape, 3)
    files = peft_roberta_seq_files(output[0], dense, out_proj, peft_adapter_config(shape, P), raw=raw)
    artifact = _roundtrip(convert_peft_files(files, shape), shape)
    _assert_prefix_and_head(artifact, output, shape, out_proj)
    assert torch.equal(artifact.pooler_weight, dense[0]) and torch.equal(artifact.pooler_bias, dense[1])
    assert artifact.head is HeadKind.SEQUENCE and artifact.backbone_family == "roberta"
    with pytest.raises(CheckpointError, match="backbone family, got 'roberta'"):
        convert_peft_files(files, tiny_engine.shape)  # a bert server


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_peft_token_classification(tiny_engine, family):
    shape = tiny_engine.shape if family == "bert" else roberta_shape(tiny_engine.shape)
    _, output = _prefix(shape)
    head = random_head(shape, len(NER_LABELS))
    files = peft_files(output[0], head, peft_adapter_config(shape, P, task_type="TOKEN_CLS"), id2label=NER_LABELS)
    config = json.loads(files["config.json"])
    files["config.json"] = json.dumps({**config, "model_type": family}).encode()
    artifact = _roundtrip(convert_peft_files(files, shape), shape)
    _assert_prefix_and_head(artifact, output, shape, head)
    assert artifact.head is HeadKind.TOKEN and artifact.labels == tuple(NER_LABELS)
    assert artifact.backbone_family == family and artifact.problem_type is ProblemType.SINGLE_LABEL


def test_peft_token_head_must_be_one_linear(tiny_engine):
    shape = tiny_engine.shape
    _, output = _prefix(shape)
    dense = (torch.randn(shape.hidden_size, shape.hidden_size), torch.randn(shape.hidden_size))
    files = peft_roberta_seq_files(output[0], dense, random_head(shape, 3),
                                   peft_adapter_config(shape, P, task_type="TOKEN_CLS"), model_type="bert")
    with pytest.raises(CheckpointError, match="classifier head expected weight and bias, got"):
        convert_peft_files(files, shape)
