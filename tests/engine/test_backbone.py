"""Backbone folders: the weights fingerprint identifies the weights (not the file layout), folders the
engine cannot run are refused with a message saying what was expected, and pickled weights are
loaded with weights_only so nothing in them runs."""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from server.engine import BackboneError, Engine, read_backbone_folder
from server.engine.backbone import weights_fingerprint


@pytest.fixture
def folder(tiny_backbone_dir, tmp_path):
    """A private copy of the tiny backbone, free to be damaged."""
    return shutil.copytree(tiny_backbone_dir, tmp_path / "bert")


def edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    config = {k: v for k, v in config.items() if v is not None}
    (folder / "config.json").write_text(json.dumps(config))


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def replace_weights(folder, tensors: dict[str, torch.Tensor]) -> None:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"))


# --- fingerprint ----------------------------------------------------------------------------------


def test_fingerprint_is_stable_across_loads(tiny_backbone_dir):
    first, second = read_backbone_folder(tiny_backbone_dir), read_backbone_folder(tiny_backbone_dir)
    assert first.fingerprint == second.fingerprint
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", first.fingerprint)
    assert first.shape().fingerprint == first.fingerprint


def test_fingerprint_changes_when_one_weight_changes(folder):
    before = read_backbone_folder(folder).fingerprint
    tensors = weights(folder)
    tensors["encoder.layer.1.output.dense.bias"][3] += 1e-6
    replace_weights(folder, tensors)
    assert read_backbone_folder(folder).fingerprint != before


def test_fingerprint_covers_the_pooler(folder):
    before = read_backbone_folder(folder).fingerprint
    tensors = weights(folder)
    tensors["pooler.dense.weight"][0, 0] += 1.0
    replace_weights(folder, tensors)
    assert read_backbone_folder(folder).fingerprint != before


def test_fingerprint_ignores_bert_prefix_and_non_backbone_tensors(folder):
    """A BertForSequenceClassification checkpoint of the same backbone has the same fingerprint."""
    before = read_backbone_folder(folder).fingerprint
    tensors = {f"bert.{name}": t for name, t in weights(folder).items()}
    tensors["bert.embeddings.position_ids"] = torch.arange(128)[None]  # a buffer, not a weight
    tensors["classifier.weight"] = torch.randn(2, 32)
    tensors["cls.predictions.bias"] = torch.randn(30522)
    replace_weights(folder, tensors)
    files = read_backbone_folder(folder)
    assert files.fingerprint == before
    assert not any(name.startswith(("bert.", "classifier", "cls")) for name in files.state_dict)


def test_fingerprint_ignores_sharding(folder):
    before = read_backbone_folder(folder).fingerprint
    tensors = weights(folder)
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, shard_names in shards.items():
        save_file({n: tensors[n] for n in shard_names}, str(folder / shard))
    weight_map = {n: shard for shard, shard_names in shards.items() for n in shard_names}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (folder / "model.safetensors").unlink()
    assert read_backbone_folder(folder).fingerprint == before


def test_fingerprint_depends_on_stored_dtype(folder):
    tensors = weights(folder)
    half = {name: t.half() for name, t in tensors.items()}
    assert weights_fingerprint(half) != weights_fingerprint(tensors)


# --- pytorch_model.bin: weights_only --------------------------------------------------------------


def test_pytorch_bin_is_loaded_with_weights_only(folder, monkeypatch):
    before = read_backbone_folder(folder).fingerprint
    torch.save(weights(folder), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    assert read_backbone_folder(folder).fingerprint == before
    assert calls and all(call.get("weights_only") is True for call in calls)


class _WritesAFile:
    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pytorch_bin_with_code_is_refused_and_not_run(folder, tmp_path):
    payload = _WritesAFile()
    payload.marker = str(tmp_path / "pwned")
    torch.save({**weights(folder), "evil": payload}, folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    with pytest.raises(BackboneError) as caught:
        read_backbone_folder(folder)
    assert not (tmp_path / "pwned").exists()
    message = str(caught.value)
    assert "expected only tensors" in message and "posix.system" in message
    assert "weights_only` set to `False`" not in message  # torch's own advice must not reach operators


def test_safetensors_wins_over_pytorch_bin(folder):
    """With both present the pickle is never opened."""
    (folder / "pytorch_model.bin").write_bytes(b"not even a pickle")
    assert read_backbone_folder(folder).fingerprint


# --- folders that are refused ----------------------------------------------------------------------


def test_missing_config(folder):
    (folder / "config.json").unlink()
    with pytest.raises(BackboneError, match=r"expected a model folder with config.json, got .* \(no config.json"):
        read_backbone_folder(folder)


@pytest.mark.parametrize("text, fragment", [("{not json", "unreadable JSON"), ("[1, 2]", "got list")])
def test_config_not_a_json_object(folder, text, fragment):
    (folder / "config.json").write_text(text)
    with pytest.raises(BackboneError, match=re.escape(fragment)):
        read_backbone_folder(folder)


@pytest.mark.parametrize("model_type", ["gpt2", "distilbert", "deberta-v2"])
def test_not_a_supported_family(folder, model_type):
    edit_config(folder, model_type=model_type)
    expected = re.escape("config.json model_type: expected one of ['bert', 'camembert', 'roberta', 'xlm-roberta'], ") + f"got '{model_type}'"
    with pytest.raises(BackboneError, match=expected):
        read_backbone_folder(folder)


@pytest.mark.parametrize("kind", ["relative_key", "relative_key_query"])
def test_relative_position_embeddings(folder, kind):
    edit_config(folder, position_embedding_type=kind)
    with pytest.raises(BackboneError, match=f"expected absolute position embeddings, got '{kind}'"):
        read_backbone_folder(folder)


def test_unsupported_activation(folder):
    edit_config(folder, hidden_act="swish")
    with pytest.raises(BackboneError, match=r"hidden_act: expected one of .*, got 'swish'"):
        read_backbone_folder(folder)


def test_missing_geometry_key(folder):
    edit_config(folder, hidden_size=None)
    with pytest.raises(BackboneError, match=r"expected integer \['hidden_size'\], got \[None\]"):
        read_backbone_folder(folder)


def test_heads_must_divide_hidden_size(folder):
    edit_config(folder, num_attention_heads=5)
    with pytest.raises(BackboneError, match="hidden_size 32 is not a multiple of num_attention_heads 5"):
        read_backbone_folder(folder)


def test_missing_weights(folder):
    (folder / "model.safetensors").unlink()
    with pytest.raises(BackboneError, match=r"no weights in .*: expected model\.safetensors"):
        read_backbone_folder(folder)


def test_weights_without_backbone_tensors(folder):
    replace_weights(folder, {"classifier.weight": torch.zeros(2, 32)})
    with pytest.raises(BackboneError, match="hold no BERT backbone tensors"):
        read_backbone_folder(folder)


def test_missing_pooler(folder):
    """P-tuning v2 classifies from the pooled output, so a backbone saved without a pooler cannot serve."""
    replace_weights(folder, {n: t for n, t in weights(folder).items() if not n.startswith("pooler.")})
    with pytest.raises(BackboneError, match=r"no pooler \(pooler.dense.\*\)"):
        Engine.from_folder(folder)


def test_missing_attention_projection(folder):
    replace_weights(folder, {n: t for n, t in weights(folder).items() if "layer.1.attention.self.key" not in n})
    with pytest.raises(BackboneError, match=r"layer 1: missing attention\.self query/key/value"):
        Engine.from_folder(folder)


def test_geometry_comes_from_the_config(tiny_backbone_dir):
    files = read_backbone_folder(tiny_backbone_dir)
    g = files.geometry
    assert (g.hidden_size, g.num_layers, g.num_heads, g.head_dim, g.max_position_embeddings) == (32, 2, 4, 8, 128)
    shape = files.shape()
    assert (shape.num_layers, shape.num_heads, shape.head_dim, shape.max_prefix_len) == (2, 4, 8, 126)
