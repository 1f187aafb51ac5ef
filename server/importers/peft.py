"""PEFT `PREFIX_TUNING` adapters -> artifacts (`LORA` adapters: peft_lora.py; which is which: peft_adapter.py).

PEFT saves `adapter_config.json` and `adapter_model.safetensors` (or `adapter_model.bin`) holding
`prompt_embeddings` `[P, L * 2 * hidden]` (the prefix encoder's output, with any projection MLP
already applied) in the seed's layout, plus the modules trained through `modules_to_save`. For a
BERT sequence classifier that is the head, saved as `base_model.classifier.weight` / `.bias` (PEFT
drops `modules_to_save.<adapter>` when it saves; raw state dicts keep it, and LoRA-style wrappers
add `model.`): all of these forms are accepted.

RoBERTa's `RobertaClassificationHead` (`SEQ_CLS`) is `classifier.dense` -> tanh -> `classifier.out_proj`
on `<s>`: `dense` becomes the artifact's own pooler, `out_proj` its classifier (SPEC 1b). `TOKEN_CLS`
adapters (`BertForTokenClassification`, `RobertaForTokenClassification`: one `classifier` Linear on
every token) become `token` heads, and `QUESTION_ANS` adapters (`*ForQuestionAnswering`: `qa_outputs`
[2, hidden] on every token, saved through modules_to_save) `span` heads (SPEC 1d). Any other trained module is refused, because the server shares
one frozen backbone (a trained backbone pooler, say, cannot be served).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from server.artifact import HEAD_RULES, BackboneShape, HeadKind, PrefixArtifact, ProblemType
from server.importers.common import (
    CheckpointError,
    build_artifact,
    check_family,
    check_flat_prefix,
    check_head,
    check_pooler,
    family_of_config,
    load_state_dict,
    parse_json,
    resolve_labels,
    resolve_problem_type,
)

ADAPTER_CONFIG = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
MODEL_CONFIG = "config.json"  # optional: the base model's config, for id2label and problem_type
WANTED_FILES = (ADAPTER_CONFIG, *WEIGHT_FILES, MODEL_CONFIG)
PROMPT = "prompt_embeddings"
_HEAD_KEY = re.compile(
    r"^(?:base_model\.)?(?:model\.)?(?P<module>classifier|score|qa_outputs)\.(?:modules_to_save\.(?P<adapter>[^.]+)\.)?"
    r"(?:(?P<part>dense|out_proj)\.)?(?P<param>weight|bias)$"
)
HEAD_KINDS = {None: HeadKind.SEQUENCE, "SEQ_CLS": HeadKind.SEQUENCE, "TOKEN_CLS": HeadKind.TOKEN, "QUESTION_ANS": HeadKind.SPAN}
SPAN_MODULE = "qa_outputs"


def read_peft_folder(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in WANTED_FILES if (folder / name).is_file()}


def convert_peft_files(
    files: dict[str, bytes],
    backbone: BackboneShape,
    labels: tuple[str, ...] | None = None,
    problem_type: ProblemType | None = None,
    source: str = "peft adapter",
) -> PrefixArtifact:
    """`files`: file name -> bytes, from a folder or a zip (see `WANTED_FILES`)."""
    if ADAPTER_CONFIG not in files:
        raise CheckpointError(f"{source}: expected {ADAPTER_CONFIG} beside the adapter weights, found none")
    config = parse_json(files[ADAPTER_CONFIG], ADAPTER_CONFIG)
    _check_config(config, backbone)
    weights_name = next((name for name in WEIGHT_FILES if name in files), None)
    if weights_name is None:
        raise CheckpointError(f"{source}: expected {' or '.join(WEIGHT_FILES)}, found neither")
    state = load_state_dict(files[weights_name], weights_name)
    if PROMPT not in state:
        raise CheckpointError(f"{weights_name}: expected the tensor {PROMPT!r}, got {sorted(state)[:10]}")
    flat = state.pop(PROMPT)  # [P, L * 2 * hidden]
    _check_prompt(flat, config, backbone, weights_name)
    head_kind = HEAD_KINDS[config.get("task_type")]
    head, pooler = find_head(state, weights_name, head_kind, backbone)
    rule = HEAD_RULES[head_kind]
    model_config = parse_json(files[MODEL_CONFIG], MODEL_CONFIG) if MODEL_CONFIG in files else {}
    family = family_of_config(model_config, MODEL_CONFIG)
    if family is not None:
        check_family(family, backbone, source)
    if rule.single_label_only:
        problem_type = problem_type or ProblemType.SINGLE_LABEL  # token classification, spans: cross-entropy
    if rule.default_labels is not None and labels is None:
        labels = rule.default_labels
    num_labels = head[0].shape[0]
    metadata = {
        "source_format": "peft-prefix-tuning",
        "source": source,
        "prefix_projection": "true" if config.get("prefix_projection") else "false",
    }
    for key, meta_key in (("base_model_name_or_path", "base_model"), ("peft_version", "peft_version")):
        if isinstance(config.get(key), str) and config[key]:
            metadata[meta_key] = config[key]
    return build_artifact(
        flat,
        head,
        backbone,
        resolve_labels(num_labels, labels, model_config),
        resolve_problem_type(problem_type, model_config, num_labels),
        metadata,
        head_kind=head_kind,
        pooler=pooler,
        family=family if (family == "roberta" or head_kind is not HeadKind.SEQUENCE) else None,  # bert SEQ_CLS stays v1
    )


def _check_config(config: dict, backbone: BackboneShape) -> None:
    peft_type = config.get("peft_type")
    if peft_type != "PREFIX_TUNING":
        raise CheckpointError(
            f"{ADAPTER_CONFIG}: peft_type expected PREFIX_TUNING or LORA, got {peft_type!r} "
            "(only prefix tuning and LoRA adapters can share the frozen backbone here)"
        )
    task_type = config.get("task_type")
    if task_type not in HEAD_KINDS:
        raise CheckpointError(f"{ADAPTER_CONFIG}: task_type expected SEQ_CLS, TOKEN_CLS or QUESTION_ANS, got {task_type!r}")
    if config.get("num_transformer_submodules") not in (None, 1):
        raise CheckpointError(
            f"{ADAPTER_CONFIG}: num_transformer_submodules expected 1 (an encoder), "
            f"got {config['num_transformer_submodules']} (an encoder-decoder)"
        )
    expected = {
        "num_layers": backbone.num_layers,
        "num_attention_heads": backbone.num_heads,
        "token_dim": backbone.hidden_size,
    }
    for key, value in expected.items():
        if config.get(key) is not None and config[key] != value:
            raise CheckpointError(
                f"{ADAPTER_CONFIG}: {key} expected {value} (this backbone), got {config[key]} "
                f"(trained on {config.get('base_model_name_or_path') or 'another model'})"
            )


def _check_prompt(flat: torch.Tensor, config: dict, backbone: BackboneShape, name: str) -> None:
    if flat.dim() == 2 and flat.shape[1] == backbone.hidden_size and config.get("prefix_projection"):
        raise CheckpointError(
            f"{name}: {PROMPT} has shape {list(flat.shape)}, the projection's input; expected its output "
            f"[P, {2 * backbone.num_layers * backbone.hidden_size}] (save the adapter with PEFT's save_pretrained)"
        )
    check_flat_prefix(flat, backbone, f"{name}: {PROMPT}")
    virtual = config.get("num_virtual_tokens")
    if virtual is not None and virtual != flat.shape[0]:
        raise CheckpointError(f"{name}: {PROMPT} expected {virtual} rows (num_virtual_tokens), got {flat.shape[0]}")


def find_head(state: dict[str, torch.Tensor], name: str, head_kind: HeadKind, backbone: BackboneShape,
              adapter: str = PROMPT):
    """(classifier weight, bias) and, for RobertaClassificationHead, its dense layer as the pooler,
    checked against the backbone; `state` holds the head and nothing else but `adapter`'s tensors."""
    head, pooler = _find_head(state, name, head_kind, adapter)
    module = SPAN_MODULE if head_kind is HeadKind.SPAN else "classifier"
    check_head(*head, backbone, f"{name}: {module}", HEAD_RULES[head_kind].fixed_outputs)
    if pooler is not None:
        check_pooler(*pooler, backbone, f"{name}: classifier.dense")
    return head, pooler


def _find_head(state: dict[str, torch.Tensor], name: str, head_kind: HeadKind, adapter: str):
    found: dict[str, dict[str, torch.Tensor]] = {}
    others = []
    for key, tensor in state.items():
        match = _HEAD_KEY.match(key)
        if match is None:
            if ".original_module." not in key:  # the untouched copy PEFT keeps beside the trained one
                others.append(key)
            continue
        part = f"{match['part']}." if match["part"] else ""
        found.setdefault(f"{match['module']}/{match['adapter']}", {})[part + match["param"]] = tensor
    if others:
        raise CheckpointError(
            f"{name}: expected only {adapter} and the classifier head, got also {sorted(others)[:8]} "
            "(other trained modules cannot be served on the shared frozen backbone)"
        )
    if not found:
        raise CheckpointError(
            f"{name}: no classifier head: expected base_model.classifier.weight and .bias "
            "(train with task_type SEQ_CLS, TOKEN_CLS or QUESTION_ANS, which save the head through modules_to_save)"
        )
    if len(found) > 1:
        raise CheckpointError(f"{name}: expected one classifier head, got several: {sorted(found)}")
    ((key, head),) = found.items()
    span_module = key.split("/")[0] == SPAN_MODULE
    if span_module != (head_kind is HeadKind.SPAN):
        expected = f"{SPAN_MODULE} (QUESTION_ANS)" if head_kind is HeadKind.SPAN else "classifier"
        raise CheckpointError(f"{name}: expected the head {expected} for task_type {head_kind.value}, got {key.split('/')[0]}")
    if set(head) == {"weight", "bias"}:
        return (head["weight"], head["bias"]), None
    two_layer = {"dense.weight", "dense.bias", "out_proj.weight", "out_proj.bias"}
    if set(head) == two_layer and head_kind is HeadKind.SEQUENCE:
        return (head["out_proj.weight"], head["out_proj.bias"]), (head["dense.weight"], head["dense.bias"])
    expected = "weight and bias" if head_kind is HeadKind.TOKEN else f"weight and bias, or {sorted(two_layer)}"
    raise CheckpointError(f"{name}: classifier head expected {expected}, got {sorted(head)}")
