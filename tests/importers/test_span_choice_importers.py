"""P-tuning v2's question-answering and multiple-choice checkpoints (BERT and RoBERTa) and PEFT
QUESTION_ANS adapters become span and choice artifacts (SPEC 1d) that answer as the reference does."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save as save_safetensors

from server.artifact import HeadKind, ProblemType, artifact_to_bytes, read_artifact
from server.batching.inputs import ChoiceInput, QuestionInput
from server.engine import read_backbone_folder
from server.importers import CheckpointError, convert_peft_files, convert_ptuning_v2, import_checkpoint
from tests.decoding.test_parity import BERT_CONTEXT, serve
from tests.importers.builders import (
    peft_adapter_config,
    random_encoder,
    random_head,
    roberta_backbone_weights,
    roberta_shape,
    seed_past_key_values,
)
from tests.reference_heads import folder_of, reference_answer, reference_choice

P = 5


def _prefix(shape, projection=False):
    encoder = random_encoder(shape, P, projection)
    with torch.no_grad():
        output = encoder(torch.arange(P)[None])  # [1, P, 2 * L * hidden]
    state = {f"prefix_encoder.{k}": v.detach().clone() for k, v in encoder.state_dict().items()}
    return state, output


def qa_checkpoint(shape, backbone_weights=None, family="bert", projection=False):
    """BertPrefixForQuestionAnswering / RobertaPrefixForQuestionAnswering: no pooler, qa_outputs [2, hidden]."""
    state, output = _prefix(shape, projection)
    head = random_head(shape, 2)
    state["qa_outputs.weight"], state["qa_outputs.bias"] = head
    for name, tensor in (backbone_weights or {}).items():
        if not name.startswith("pooler."):
            state[f"{family}.{name}"] = tensor.clone()
    return state, output, head


def mc_checkpoint(shape, backbone_weights=None, family="bert"):
    """BertPrefixForMultipleChoice / RobertaPrefixForMultipleChoice: pooler kept, classifier [1, hidden]."""
    state, output = _prefix(shape)
    head = random_head(shape, 1, seed=4)
    state["classifier.weight"], state["classifier.bias"] = head
    for name, tensor in (backbone_weights or {}).items():
        state[f"{family}.{name}"] = tensor.clone()
    return state, output, head


def test_bert_qa_checkpoint_answers_as_the_pipeline(tiny_engine, tiny_backbone_dir, tmp_path):
    shape = tiny_engine.shape
    weights = read_backbone_folder(tiny_backbone_dir).state_dict
    state, output, head = qa_checkpoint(shape, weights, projection=True)
    folder = tmp_path / "qa"
    folder.mkdir()
    torch.save(state, folder / "pytorch_model.bin")
    config = {"architectures": ["BertPrefixForQuestionAnswering"], "id2label": {"0": "LABEL_0", "1": "LABEL_1"}}
    (folder / "config.json").write_text(json.dumps(config))
    artifact = import_checkpoint(folder, shape, backbone_weights=weights)
    assert artifact.head is HeadKind.SPAN and artifact.labels == ("start", "end") and artifact.backbone_fingerprint
    assert artifact.problem_type is ProblemType.SINGLE_LABEL and artifact.pooler_weight is None
    assert torch.allclose(artifact.key_values, seed_past_key_values(output, shape), atol=1e-6)
    assert torch.equal(artifact.classifier_weight, head[0])
    assert read_artifact(artifact_to_bytes(artifact), shape).head is HeadKind.SPAN  # stored as qa_outputs.*
    question = QuestionInput("Who went to New York?", BERT_CONTEXT)
    (got,), _ = serve(tiny_engine, artifact, [question], HeadKind.SPAN)
    expected = reference_answer(folder_of(tiny_engine), artifact, question.question, question.context)
    assert (got.answer, got.start, got.end) == (expected["answer"], expected["start"], expected["end"])


def test_qa_outputs_alone_make_a_span_head_and_roberta_keeps_no_pooler(tiny_engine):
    shape = roberta_shape(tiny_engine.shape)
    state, _, _ = qa_checkpoint(shape, roberta_backbone_weights(shape, pooler=False), family="roberta")
    artifact = convert_ptuning_v2(state, shape)
    assert artifact.head is HeadKind.SPAN and artifact.backbone_family == "roberta" and artifact.pooler_weight is None


def test_misshapen_qa_outputs_are_refused(tiny_engine):
    state, _, _ = qa_checkpoint(tiny_engine.shape)
    state["qa_outputs.weight"] = torch.zeros(3, tiny_engine.shape.hidden_size)
    state["qa_outputs.bias"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=r"qa_outputs.weight: expected shape \[2, 32\], got \[3, 32\]"):
        convert_ptuning_v2(state, tiny_engine.shape)


def test_bert_mc_checkpoint_scores_as_the_reference(tiny_engine, tiny_backbone_dir):
    shape = tiny_engine.shape
    state, _, _ = mc_checkpoint(shape, read_backbone_folder(tiny_backbone_dir).state_dict)
    with_architecture = convert_ptuning_v2(state, shape, model_config={"architectures": ["BertPrefixForMultipleChoice"]})
    by_flag = convert_ptuning_v2(state, shape, head_kind=HeadKind.CHOICE)
    assert with_architecture.head is by_flag.head is HeadKind.CHOICE and by_flag.labels == ("choice",)
    assert with_architecture.pooler_weight is None  # BERT's own pooler, the backbone's
    # Without architectures a [1, hidden] classifier is the seed's one-output regression head.
    assert convert_ptuning_v2(state, shape).head is HeadKind.SEQUENCE
    item = ChoiceInput("the quick brown fox", ("jumps over the lazy dog", "a gorgeous movie"))
    (got,), _ = serve(tiny_engine, by_flag, [item], HeadKind.CHOICE)
    assert got.scores == pytest.approx(reference_choice(folder_of(tiny_engine), by_flag, item.text, list(item.choices)), abs=1e-5)


def test_roberta_mc_checkpoint_keeps_its_pooler(tiny_engine):
    shape = roberta_shape(tiny_engine.shape)
    state, _, _ = mc_checkpoint(shape, roberta_backbone_weights(shape, pooler=True), family="roberta")
    artifact = convert_ptuning_v2(state, shape, model_config={"architectures": ["RobertaPrefixForMultipleChoice"]})
    assert artifact.head is HeadKind.CHOICE and artifact.pooler_weight is not None
    assert torch.equal(artifact.pooler_weight, state["roberta.pooler.dense.weight"].float())


def _peft_qa_files(shape, head_module="qa_outputs", rows=2, raw=False):
    encoder = random_encoder(shape, P, False)
    with torch.no_grad():
        prompt = encoder(torch.arange(P)[None])[0]  # [P, 2 * L * hidden]
    weight, bias = random_head(shape, rows)
    root = f"base_model.{head_module}.modules_to_save.default." if raw else f"base_model.{head_module}."
    tensors = {"prompt_embeddings": prompt.contiguous(), f"{root}weight": weight, f"{root}bias": bias}
    config = peft_adapter_config(shape, P, task_type="QUESTION_ANS", modules_to_save=["qa_outputs"])
    return {"adapter_config.json": json.dumps(config).encode(), "adapter_model.safetensors": save_safetensors(tensors)}, prompt


@pytest.mark.parametrize("raw", [False, True])
def test_peft_question_answering_adapter_is_a_span_head(tiny_engine, raw):
    shape = tiny_engine.shape
    files, prompt = _peft_qa_files(shape, raw=raw)
    artifact = convert_peft_files(files, shape)
    assert artifact.head is HeadKind.SPAN and artifact.labels == ("start", "end")
    assert torch.allclose(artifact.key_values, seed_past_key_values(prompt[None], shape), atol=1e-6)
    read_artifact(artifact_to_bytes(artifact), shape)


@pytest.mark.parametrize(
    "module, rows, message",
    [("classifier", 2, "expected the head qa_outputs"), ("qa_outputs", 3, r"expected shape \[2, 32\], got \[3, 32\]")],
)
def test_peft_question_answering_adapter_with_the_wrong_head_is_refused(tiny_engine, module, rows, message):
    files, _ = _peft_qa_files(tiny_engine.shape, module, rows)
    with pytest.raises(CheckpointError, match=message):
        convert_peft_files(files, tiny_engine.shape)
