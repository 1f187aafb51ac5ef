"""LoRA test helpers: PEFT adapters made in the test with `get_peft_model(...).save_pretrained`, the
references (PEFT's `PeftModel`, given the prefix as past key/values when the task has one, and the
merged-weights model for native artifacts), and zipping an adapter folder as a user would upload it."""

from __future__ import annotations

import copy
import functools
import io
import zipfile
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import (
    AutoModel,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    DynamicCache,
)

from server.artifact import HeadKind, PrefixArtifact

TASK_MODELS = {
    HeadKind.SEQUENCE: AutoModelForSequenceClassification,
    HeadKind.TOKEN: AutoModelForTokenClassification,
    HeadKind.SPAN: AutoModelForQuestionAnswering,
}
TASK_TYPES = {HeadKind.SEQUENCE: "SEQ_CLS", HeadKind.TOKEN: "TOKEN_CLS", HeadKind.SPAN: "QUESTION_ANS"}
QUERY_VALUE = ["query", "value"]
ALL_LINEAR = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]


def make_peft_adapter(backbone: str | Path, out: Path, head: HeadKind = HeadKind.SEQUENCE, num_labels: int = 3,
                      seed: int = 0, **lora) -> Path:
    """A PEFT LoRA adapter of `backbone` saved by save_pretrained into `out`. Its LoRA B is not zero
    (init_lora_weights=False: an adapter as if trained), its head random."""
    torch.manual_seed(seed)
    model = TASK_MODELS[head].from_pretrained(backbone, num_labels=num_labels)
    options = {"r": 4, "lora_alpha": 8, "target_modules": QUERY_VALUE, "init_lora_weights": False, **lora}
    peft_model = get_peft_model(model, LoraConfig(task_type=TASK_TYPES[head], **options))
    with torch.no_grad():  # PEFT's default init is small; larger weights make any mistake show
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.2)
    peft_model.save_pretrained(out)
    return out


def zip_folder(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(folder.iterdir()):
            archive.write(path, f"{folder.name}/{path.name}")
    return buffer.getvalue()


@functools.lru_cache(maxsize=16)
def _peft_model(backbone: str, adapter: str, head: HeadKind, num_labels: int):
    base = TASK_MODELS[head].from_pretrained(backbone, num_labels=num_labels, attn_implementation="eager")
    return PeftModel.from_pretrained(base, adapter).eval(), AutoTokenizer.from_pretrained(backbone)


def _prefix_inputs(model, tokenizer, text, key_values: torch.Tensor | None) -> dict:
    """The tokenizer's encoding (cut at the family's limit for the prefix), and the prefix in a DynamicCache."""
    config = model.config
    P = key_values.shape[3] if key_values is not None else 0
    offset = config.pad_token_id + 1 if config.model_type == "roberta" else 0
    pair = (text,) if isinstance(text, str) else tuple(text)
    enc = tokenizer(*pair, truncation=True, max_length=config.max_position_embeddings - offset - P, return_tensors="pt")
    inputs = {"input_ids": enc["input_ids"], "token_type_ids": enc.get("token_type_ids", torch.zeros_like(enc["input_ids"]))}
    if key_values is None:
        return inputs | {"attention_mask": enc["attention_mask"]}
    cache = DynamicCache()
    for layer in range(key_values.shape[0]):
        cache.update(key_values[layer, 0][None].float(), key_values[layer, 1][None].float(), layer)  # [1, H, P, D]
    mask = torch.cat([torch.ones(1, P, dtype=enc["attention_mask"].dtype), enc["attention_mask"]], dim=1)
    return inputs | {"attention_mask": mask, "cache": cache}


@torch.no_grad()
def peft_scores(backbone: str | Path, adapter: str | Path, head: HeadKind, num_labels: int, text,
                key_values: torch.Tensor | None = None) -> list:
    """What PeftModel computes, with the prefix as past key/values if given: [labels] (softmax) for a
    sequence head, [S, labels] for a token head, [S, 2] raw start and end logits for a span head."""
    model, tokenizer = _peft_model(str(backbone), str(adapter), head, num_labels)
    out = model(**_prefix_inputs(model, tokenizer, text, key_values))
    if head is HeadKind.SPAN:
        return torch.stack([out.start_logits[0], out.end_logits[0]], dim=-1).tolist()  # [S, 2]
    return out.logits[0].softmax(-1).tolist()


@functools.lru_cache(maxsize=4)
def _base_model(backbone: str):
    return AutoModel.from_pretrained(backbone, attn_implementation="eager").eval(), AutoTokenizer.from_pretrained(backbone)


@torch.no_grad()
def merged_scores(backbone: str | Path, artifact: PrefixArtifact, text) -> list:
    """The merged reference of a native artifact: the HF model with `W + lora_scaling * B A` in every
    adapted Linear, given the prefix as past key/values, then the artifact's head (softmax)."""
    base, tokenizer = _base_model(str(backbone))
    model = copy.deepcopy(base)
    for (layer, module), (a, b) in artifact.lora.modules.items():
        linear = model.encoder.layer[layer].get_submodule(module)
        linear.weight += artifact.lora.scaling * (b.float() @ a.float())  # [out, in]
    out = model(**_prefix_inputs(model, tokenizer, text, artifact.key_values))
    weight, bias = artifact.classifier_weight.float(), artifact.classifier_bias.float()
    if artifact.head is HeadKind.TOKEN:
        return (out.last_hidden_state[0] @ weight.T + bias).softmax(-1).tolist()
    if artifact.pooler_weight is not None:
        pooled = torch.tanh(out.last_hidden_state[0, 0] @ artifact.pooler_weight.float().T + artifact.pooler_bias.float())
    else:
        pooled = out.pooler_output[0]
    return (pooled @ weight.T + bias).softmax(-1).tolist()
