"""Synthetic checkpoints with the exact key names and shapes PEFT and P-tuning v2 save, and the
seed's own way of turning them into past key/values (the reference the importers must match)."""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import replace

import torch
from safetensors.torch import save as save_safetensors
from torch import nn

from server.artifact import BackboneShape, PrefixArtifact, ProblemType


class SeedPrefixEncoder(nn.Module):
    """The seed's PrefixEncoder: input (batch, P) token ids, output (batch, P, 2 * layers * hidden)."""

    def __init__(self, pre_seq_len, hidden, layers, projection=False, prefix_hidden=16):
        super().__init__()
        self.prefix_projection = projection
        if projection:
            self.embedding = nn.Embedding(pre_seq_len, hidden)
            self.trans = nn.Sequential(
                nn.Linear(hidden, prefix_hidden), nn.Tanh(), nn.Linear(prefix_hidden, layers * 2 * hidden)
            )
        else:
            self.embedding = nn.Embedding(pre_seq_len, layers * 2 * hidden)

    def forward(self, prefix):
        tokens = self.embedding(prefix)
        return self.trans(tokens) if self.prefix_projection else tokens


def seed_past_key_values(encoder_output: torch.Tensor, shape: BackboneShape) -> torch.Tensor:
    """The seed's get_prompt for one row, stacked as [L, 2, H, P, D] for tests.helpers.reference_scores."""
    P = encoder_output.shape[1]
    pkv = encoder_output.view(1, P, shape.num_layers * 2, shape.num_heads, shape.head_dim)
    pairs = pkv.permute([2, 0, 3, 1, 4]).split(2)  # L x [2, 1, H, P, D]
    return torch.stack([pair[:, 0] for pair in pairs])


def reference_artifact(encoder_output, shape, weight, bias, labels, problem_type=ProblemType.SINGLE_LABEL):
    return PrefixArtifact(
        key_values=seed_past_key_values(encoder_output.detach().float(), shape),
        classifier_weight=weight.detach().float(),
        classifier_bias=bias.detach().float(),
        problem_type=problem_type,
        labels=tuple(labels),
    )


def random_encoder(shape: BackboneShape, P: int, projection: bool, seed: int = 0) -> SeedPrefixEncoder:
    torch.manual_seed(seed)
    encoder = SeedPrefixEncoder(P, shape.hidden_size, shape.num_layers, projection)
    for p in encoder.parameters():
        nn.init.normal_(p, std=0.5 if projection else 1.0)
    return encoder


def random_head(shape: BackboneShape, num_labels: int, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(num_labels, shape.hidden_size, generator=gen) * 0.5, torch.randn(num_labels, generator=gen) * 0.1


def peft_adapter_config(shape: BackboneShape, P: int, **overrides) -> dict:
    """What PEFT's PrefixTuningConfig(task_type=SEQ_CLS).save_pretrained writes for a BERT model."""
    config = {
        "auto_mapping": None,
        "base_model_name_or_path": "tiny-bert",
        "encoder_hidden_size": shape.hidden_size,
        "inference_mode": True,
        "modules_to_save": ["classifier", "score"],
        "num_attention_heads": shape.num_heads,
        "num_layers": shape.num_layers,
        "num_transformer_submodules": 1,
        "num_virtual_tokens": P,
        "peft_type": "PREFIX_TUNING",
        "prefix_projection": False,
        "revision": None,
        "task_type": "SEQ_CLS",
        "token_dim": shape.hidden_size,
    }
    config.update(overrides)
    return config


def peft_files(prompt_embeddings, head, config, *, head_keys="saved", weights="safetensors", id2label=None) -> dict:
    """Files of a saved PEFT adapter folder. head_keys: "saved" (what save_pretrained writes) or
    "raw" (a model.state_dict(), with modules_to_save.default and the original_module copy)."""
    weight, bias = head
    tensors = {"prompt_embeddings": prompt_embeddings.detach().contiguous()}
    if head_keys == "saved":
        tensors.update({"base_model.classifier.weight": weight, "base_model.classifier.bias": bias})
    elif head_keys == "raw":
        tensors.update(
            {
                "base_model.classifier.modules_to_save.default.weight": weight,
                "base_model.classifier.modules_to_save.default.bias": bias,
                "base_model.classifier.original_module.weight": torch.zeros_like(weight),
                "base_model.classifier.original_module.bias": torch.zeros_like(bias),
            }
        )
    files = {"adapter_config.json": json.dumps(config).encode()}
    if weights == "safetensors":
        files["adapter_model.safetensors"] = save_safetensors(tensors)
    else:
        buffer = io.BytesIO()
        torch.save(tensors, buffer)
        files["adapter_model.bin"] = buffer.getvalue()
    if id2label is not None:
        files["config.json"] = json.dumps({"id2label": {str(i): n for i, n in enumerate(id2label)}}).encode()
    return files


def write_folder(folder, files: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)


def zip_bytes(files: dict, root: str = "adapter/") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(root + name, data)
    return buffer.getvalue()


def ptuning_v2_state_dict(encoder: SeedPrefixEncoder, head, backbone_weights=None, family: str = "bert") -> dict:
    """A P-tuning v2 model's state_dict: prefix_encoder.*, classifier.*, and the frozen backbone under
    `bert.*` or `roberta.*` (with `pooler.dense.*` when the model keeps a pooler)."""
    state = {f"prefix_encoder.{k}": v.detach().clone() for k, v in encoder.state_dict().items()}
    state["classifier.weight"], state["classifier.bias"] = head
    for name, tensor in (backbone_weights or {}).items():
        state[f"{family}.{name}"] = tensor.clone()
    return state


def roberta_shape(shape: BackboneShape) -> BackboneShape:
    """The same geometry as a RoBERTa-family server sees it (positions after padding_idx 1)."""
    return replace(shape, family="roberta", position_offset=2)


def roberta_backbone_weights(shape: BackboneShape, pooler: bool, seed: int = 0) -> dict:
    """A tiny RobertaModel's state_dict: what P-tuning v2's RoBERTa models hold under `roberta.`
    (`add_pooling_layer=False` in the token model, so no `pooler.*` there)."""
    from transformers import RobertaConfig, RobertaModel

    torch.manual_seed(seed)
    config = RobertaConfig(
        vocab_size=64, hidden_size=shape.hidden_size, num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads, intermediate_size=2 * shape.hidden_size,
        max_position_embeddings=shape.max_position_embeddings, pad_token_id=1,
    )
    return RobertaModel(config, add_pooling_layer=pooler).state_dict()


def peft_roberta_seq_files(prompt_embeddings, dense, out_proj, config, *, raw=False, model_type="roberta") -> dict:
    """A PEFT SEQ_CLS adapter of a RobertaForSequenceClassification: its RobertaClassificationHead
    (`classifier.dense`, `classifier.out_proj`) saved through modules_to_save."""
    root = "base_model.classifier.modules_to_save.default." if raw else "base_model.classifier."
    tensors = {"prompt_embeddings": prompt_embeddings.detach().contiguous()}
    for part, (weight, bias) in (("dense", dense), ("out_proj", out_proj)):
        tensors[f"{root}{part}.weight"], tensors[f"{root}{part}.bias"] = weight, bias
        if raw:
            tensors[f"base_model.classifier.original_module.{part}.weight"] = torch.zeros_like(weight)
            tensors[f"base_model.classifier.original_module.{part}.bias"] = torch.zeros_like(bias)
    return {
        "adapter_config.json": json.dumps(config).encode(),
        "adapter_model.safetensors": save_safetensors(tensors),
        "config.json": json.dumps({"model_type": model_type, "architectures": ["RobertaForSequenceClassification"]})
        .encode(),
    }
