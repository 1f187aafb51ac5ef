"""Original P-tuning v2 checkpoints (with and without the projection MLP), and the import command."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from server.artifact import ProblemType, read_artifact_file
from server.commands import import_checkpoint as import_command
from server.engine import read_backbone_folder
from server.importers import CheckpointError, convert_ptuning_v2, import_checkpoint
from tests.importers.builders import ptuning_v2_state_dict, random_encoder, random_head, reference_artifact
from tests.importers.test_peft import assert_serves_like_reference

P = 7


def _checkpoint(shape, projection, backbone_weights=None, num_labels=2):
    encoder = random_encoder(shape, P, projection)
    head = random_head(shape, num_labels)
    with torch.no_grad():
        output = encoder(torch.arange(P).unsqueeze(0).expand(1, -1))  # the seed's get_prompt, batch of one
    return ptuning_v2_state_dict(encoder, head, backbone_weights), output, head


def _save_folder(folder, state, config):
    folder.mkdir()
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("projection", [False, True])
def test_checkpoint_folder_matches_reference(tiny_engine, tiny_backbone_dir, tmp_path, projection):
    shape = tiny_engine.shape
    weights = read_backbone_folder(tiny_backbone_dir).state_dict
    state, output, head = _checkpoint(shape, projection, backbone_weights=weights)
    config = {"pre_seq_len": P, "prefix_projection": projection, "id2label": {"0": "entailment", "1": "not_entailment"}}
    folder = _save_folder(tmp_path / "ckpt", state, config)
    artifact = import_checkpoint(folder, shape, backbone_weights=weights)
    assert artifact.labels == ("entailment", "not_entailment")
    assert artifact.extra_metadata["prefix_projection"] == ("true" if projection else "false")
    assert artifact.backbone_fingerprint == shape.fingerprint  # bert.* matched this backbone, so it is pinned
    reference = reference_artifact(output, shape, *head, artifact.labels)
    assert_serves_like_reference(tiny_engine, tiny_backbone_dir, artifact, reference)


def test_other_backbone_weights_are_refused(tiny_engine, tiny_backbone_dir):
    weights = read_backbone_folder(tiny_backbone_dir).state_dict
    other = {name: tensor + 0.1 for name, tensor in weights.items()}
    state, _, _ = _checkpoint(tiny_engine.shape, False, backbone_weights=other)
    with pytest.raises(CheckpointError, match="differs from this server's backbone"):
        convert_ptuning_v2(state, tiny_engine.shape, backbone_weights=weights)
    unpinned = convert_ptuning_v2(state, tiny_engine.shape)  # nothing to compare against: converted, not pinned
    assert unpinned.backbone_fingerprint is None


def test_one_output_is_regression_by_default(tiny_engine):
    state, _, _ = _checkpoint(tiny_engine.shape, False, num_labels=1)
    assert convert_ptuning_v2(state, tiny_engine.shape).problem_type is ProblemType.REGRESSION


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.pop("prefix_encoder.embedding.weight"), "not a P-tuning v2 checkpoint"),
        (lambda s: s.pop("classifier.bias"), "no classifier head"),
        (lambda s: s.update({"prefix_encoder.embedding.weight": torch.zeros(P, 256)}), "got \\[7, 256\\]"),
        (lambda s: s.update({"roberta.pooler.dense.weight": torch.zeros(1)}), "'bert' backbone family, got 'roberta'"),
        (lambda s: s.update({"deberta.embeddings.x": torch.zeros(1)}), "expected a BERT or RoBERTa checkpoint"),
        (lambda s: s.pop("prefix_encoder.trans.2.bias"), "missing \\['prefix_encoder.trans.2.bias'\\]"),
    ],
)
def test_unconvertible_checkpoints_are_refused(tiny_engine, edit, message):
    state, _, _ = _checkpoint(tiny_engine.shape, projection="trans" in message)
    edit(state)
    with pytest.raises(CheckpointError, match=message):
        convert_ptuning_v2(state, tiny_engine.shape)


def test_import_command(tiny_engine, tiny_backbone_dir, tmp_path, capsys):
    state, _, _ = _checkpoint(tiny_engine.shape, True)
    source = tmp_path / "model.bin"
    torch.save(state, source)
    parser = argparse.ArgumentParser()
    import_command.register(parser.add_subparsers())
    out = tmp_path / "out" / "task.safetensors"
    common = ["--out", str(out), "--backbone", str(tiny_backbone_dir)]
    args = parser.parse_args(["import", str(source), *common, "--labels", "a,b"])
    assert args.func(args) == 0
    assert read_artifact_file(out, tiny_engine.shape).labels == ("a", "b")
    assert "wrote" in capsys.readouterr().out
    args = parser.parse_args(["import", str(tmp_path / "missing"), *common])
    assert args.func(args) == 2
    assert "error: " in capsys.readouterr().err
