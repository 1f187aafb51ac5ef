"""PEFT PREFIX_TUNING adapters: parity with the seed's reference, and the refusals."""

from __future__ import annotations

import pickle

import pytest
import torch

from server.artifact import ArtifactError, ProblemType
from server.importers import CheckpointError, convert_peft_adapter, convert_peft_files, import_checkpoint
from tests.helpers import reference_scores
from tests.importers.builders import (
    peft_adapter_config,
    peft_files,
    random_encoder,
    random_head,
    reference_artifact,
    write_folder,
)

TEXTS = ["a fine film", ("is it good?", "yes it is"), "word " * 140]


def _source(shape, P=6, num_labels=3, projection=False):
    encoder = random_encoder(shape, P, projection)
    with torch.no_grad():
        output = encoder(torch.arange(P)[None])  # [1, P, 2 * L * hidden]: PEFT's get_prompt_embedding_to_save
    return output, random_head(shape, num_labels)


def assert_serves_like_reference(engine, folder, artifact, reference):
    handle = engine.load(artifact)
    encoded = engine.encode(TEXTS, artifact.prefix_len)
    for text, got in zip(TEXTS, engine.score_encoded([(e, handle) for e in encoded])):
        expected = reference_scores(folder, reference, text)
        assert max(abs(a - b) for a, b in zip(got, expected)) <= 1e-5


@pytest.mark.parametrize(
    "projection, head_keys, weights",
    [(False, "saved", "safetensors"), (True, "saved", "bin"), (False, "raw", "bin")],
)
def test_peft_folder_matches_reference(tiny_engine, tiny_backbone_dir, tmp_path, projection, head_keys, weights):
    shape = tiny_engine.shape
    output, head = _source(shape, projection=projection)
    config = peft_adapter_config(shape, 6, prefix_projection=projection)
    files = peft_files(output[0], head, config, head_keys=head_keys, weights=weights, id2label=["x", "y", "z"])
    write_folder(tmp_path / "adapter", files)
    artifact = import_checkpoint(tmp_path / "adapter", shape)
    assert artifact.labels == ("x", "y", "z") and artifact.prefix_len == 6
    assert artifact.extra_metadata["source_format"] == "peft-prefix-tuning"
    assert artifact.backbone_fingerprint is None  # PEFT files do not say which weights they were trained on
    reference = reference_artifact(output, shape, *head, "xyz")
    assert_serves_like_reference(tiny_engine, tiny_backbone_dir, artifact, reference)


def test_labels_and_problem_type_from_flags(tiny_engine):
    shape = tiny_engine.shape
    output, head = _source(shape, num_labels=2)
    files = peft_files(output[0], head, peft_adapter_config(shape, 6))
    artifact = convert_peft_files(files, shape, ("no", "yes"), ProblemType.MULTI_LABEL)
    assert artifact.labels == ("no", "yes") and artifact.problem_type is ProblemType.MULTI_LABEL
    default = convert_peft_files(files, shape)
    assert default.labels == ("LABEL_0", "LABEL_1") and default.problem_type is ProblemType.SINGLE_LABEL


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(config={"peft_type": "IA3"}), "peft_type expected PREFIX_TUNING or LORA, got 'IA3'"),
        (dict(config={"task_type": "CAUSAL_LM"}), "task_type expected SEQ_CLS"),
        (dict(config={"num_layers": 12}), "num_layers expected 2 \\(this backbone\\), got 12"),
        (dict(config={"num_virtual_tokens": 9}), "expected 9 rows \\(num_virtual_tokens\\), got 6"),
        (dict(prompt_width=96), "expected shape \\[P, 2 \\* num_layers \\* hidden_size = 2 \\* 2 \\* 32 = 128\\]"),
        (dict(head_keys="none"), "no classifier head: expected base_model.classifier.weight"),
        (dict(extra={"base_model.bert.pooler.dense.weight": torch.zeros(32, 32)}), "other trained modules"),
        (dict(head_width=16), "classifier.weight: expected shape \\[num_labels, 32\\], got \\[3, 16\\]"),
        (dict(labels=("a", "b")), "--labels: the classifier has 3 outputs, got 2 names"),
    ],
)
def test_unconvertible_adapters_are_refused(tiny_engine, change, message):
    shape = tiny_engine.shape
    output, head = _source(shape)
    prompt = output[0]
    if "prompt_width" in change:
        prompt = torch.zeros(6, change["prompt_width"])
    if "head_width" in change:
        head = (torch.zeros(3, change["head_width"]), head[1])
    config = peft_adapter_config(shape, 6, **change.get("config", {}))
    files = peft_files(prompt, head, config, head_keys=change.get("head_keys", "saved"))
    if "extra" in change:
        from safetensors.torch import load, save

        files["adapter_model.safetensors"] = save({**load(files["adapter_model.safetensors"]), **change["extra"]})
    with pytest.raises(CheckpointError, match=message):
        convert_peft_adapter(files, shape, change.get("labels"))
    assert issubclass(CheckpointError, ArtifactError)


class NotATensor:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickles_with_objects_are_refused(tiny_engine, capsys):
    shape = tiny_engine.shape
    output, head = _source(shape)
    files = peft_files(output[0], head, peft_adapter_config(shape, 6), weights="bin")
    files["adapter_model.bin"] = pickle.dumps({"prompt_embeddings": NotATensor()}, protocol=2)
    with pytest.raises(CheckpointError, match="could not read it safely"):
        convert_peft_files(files, shape)
    assert "must never run" not in capsys.readouterr().out
