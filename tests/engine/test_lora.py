"""LoRA tasks in the engine (SPEC 1c), float32, against PEFT itself: adapters made here with
`get_peft_model(...).save_pretrained`, imported as a user would, and compared with `PeftModel` (given
the prefix as past key/values when the task has one too) to 1e-5. Both families, sequence heads on the
backbone's pooler and on a task's own (RoBERTa's classification head), token heads; batches mixing
prefix-only, LoRA-only and LoRA+prefix rows, where every row equals the same request alone."""

from __future__ import annotations

import dataclasses
import gc

import numpy as np
import pytest
import torch

from harness.random_backbone import write_random_roberta_backbone
from server.artifact import HeadKind
from server.artifact.lora import LoraWeights
from server.engine import Engine
from server.importers import import_checkpoint
from tests.helpers import load_task, make_artifact, reference_scores, score_rows, token_batch
from tests.lora_helpers import ALL_LINEAR, make_peft_adapter, merged_scores, peft_scores

TOL = 1e-5
LONG = "the quick brown fox jumps over the lazy dog " * 20
TEXTS = [
    "a gorgeous, witty, seductive movie.",
    ("A man is playing a guitar.", "Someone plays an instrument."),
    LONG,
    "George Washington went to New York.",
    "short",
    ("What is the capital of France?", "Paris is the capital and largest city of France, on the Seine."),
]
SEQ, TOK, SPAN = HeadKind.SEQUENCE, HeadKind.TOKEN, HeadKind.SPAN
# name -> (head, LoRA options or None, prefix length): every kind of task a batch may mix
TASKS = {
    "prefix_seq": (SEQ, None, 5),
    "prefix_tok": (TOK, None, 3),
    "lora_seq": (SEQ, {"r": 4}, 0),
    "lora_tok": (TOK, {"r": 8, "target_modules": ALL_LINEAR, "rank_pattern": {"key": 2}}, 0),
    "lora_prefix_seq": (SEQ, {"r": 2, "target_modules": ALL_LINEAR, "use_rslora": True, "lora_alpha": 5}, 4),
    "lora_prefix_tok": (TOK, {"r": 3, "target_modules": ["query", "key"], "alpha_pattern": {"layer.1.attention.self.key": 1}}, 7),
    "lora_seq_wide": (SEQ, {"r": 16, "target_modules": ["value", "intermediate.dense"]}, 0),
    "lora_span": (SPAN, {"r": 4}, 0),
    "lora_prefix_span": (SPAN, {"r": 2, "target_modules": ALL_LINEAR}, 6),
}


@pytest.fixture(scope="module", params=["bert", "roberta"])
def family(request, tiny_backbone_dir, tmp_path_factory):
    """(backbone folder, engine, {task name: (artifact, reference(text) -> scores)}) of one family."""
    if request.param == "bert":
        folder = tiny_backbone_dir
    else:  # a RoBERTa checkpoint without a pooler: sequence tasks bring their own (PEFT's classification head)
        folder = write_random_roberta_backbone(tmp_path_factory.mktemp("tiny-roberta-lora"), with_pooler=False, seed=1)
    engine = Engine.from_folder(folder)
    tasks = {}
    for seed, (name, (head, lora, prefix_len)) in enumerate(TASKS.items()):
        if head is SPAN and request.param == "bert":
            continue  # refused on BERT (PEFT's QA LoRA never sees segment ids): test_peft_lora.py
        tasks[name] = _task(engine, folder, tmp_path_factory.mktemp(name), head, lora, prefix_len, seed)
    return folder, engine, tasks


def _task(engine, folder, tmp, head, lora, prefix_len, seed):
    own_pooler = head is SEQ and not engine.shape.pooler
    labels = 2 if head is SPAN else 3  # a span head's outputs are start and end
    kv = make_artifact(engine.shape, max(prefix_len, 1), labels, seed=seed, head=head, own_pooler=own_pooler)
    if lora is None:
        return kv, lambda text: reference_scores(folder, kv, text)
    adapter = make_peft_adapter(folder, tmp / "adapter", head, num_labels=labels, seed=seed, **lora)
    artifact = import_checkpoint(adapter, engine.shape)
    key_values = kv.key_values if prefix_len else None
    artifact = dataclasses.replace(artifact, key_values=key_values)
    return artifact, lambda text: peft_scores(folder, adapter, head, labels, text, key_values)


def close(got, expected) -> bool:
    return torch.allclose(torch.tensor(got), torch.tensor(expected), atol=TOL, rtol=0)


def test_every_kind_of_task_equals_its_reference(family):
    _, engine, tasks = family
    for name, (artifact, reference) in tasks.items():
        loaded = load_task(engine, artifact)
        assert loaded.facts.prefix_len == artifact.prefix_len
        rows = [(engine.encode([text], artifact.prefix_len)[0], loaded) for text in TEXTS]
        for text, got in zip(TEXTS, score_rows(engine, rows)):
            assert close(got, reference(text)), (name, text)


@pytest.mark.parametrize("mode", ["runs", "blocks"])
def test_a_mixed_batch_equals_each_request_alone(family, mode, monkeypatch):
    """Prefix-only, LoRA-only and LoRA+prefix rows of both heads in one forward; tasks repeat over rows
    (segments of several rows, longer than a block) and adapters of different ranks meet. Both ways of
    computing the deltas (lora.py: the CPU's runs, the GPU's blocks) run here."""
    _, engine, tasks = family
    monkeypatch.setattr(engine, "lora_mode", mode)
    loaded = {name: load_task(engine, artifact) for name, (artifact, _) in tasks.items()}
    rng = np.random.default_rng(0)
    plan = [(name, TEXTS[i]) for name in tasks for i in rng.choice(len(TEXTS), size=3, replace=False)]
    rng.shuffle(plan)
    rows = [(engine.encode([text], loaded[name].facts.prefix_len)[0], loaded[name]) for name, text in plan]
    together = score_rows(engine, rows)
    for row, (name, text), got in zip(rows, plan, together):
        alone = score_rows(engine, [row])[0]
        assert close(got, alone), (name, text)
        assert close(got, tasks[name][1](text)), (name, text)


def test_rows_without_an_adapter_have_no_lora_plan(family):
    _, engine, tasks = family
    prefix_only = load_task(engine, tasks["prefix_seq"][0])
    with_lora = load_task(engine, tasks["lora_seq"][0])
    encoded = engine.encode(["a plain row"], 5)[0]
    assert engine.pack(token_batch([(encoded, prefix_only)])).lora is None
    mixed = engine.pack(token_batch([(encoded, prefix_only), (encoded, with_lora)]))
    assert mixed.lora is not None and set(mixed.lora.plans) == {"qkv"}  # query and value: the fused projection only


def test_a_native_lora_and_prefix_artifact_equals_the_merged_reference(tiny_backbone_dir, tiny_engine):
    """Every module of SPEC 1c with its own rank, a layer left out, float16 tensors and a scaling."""
    shape, g = tiny_engine.shape, tiny_engine.files.geometry
    gen = torch.Generator().manual_seed(3)
    features = {"attention.self.query": (32, 32), "attention.self.key": (32, 32), "attention.self.value": (32, 32),
                "attention.output.dense": (32, 32), "intermediate.dense": (32, g.intermediate_size),
                "output.dense": (g.intermediate_size, 32)}
    modules = {}
    for rank, (module, (in_features, out_features)) in enumerate(features.items(), start=1):
        for layer in range(shape.num_layers):
            if (layer, module) != (1, "attention.self.key"):
                a = torch.randn(rank, in_features, generator=gen) * 0.3
                modules[(layer, module)] = (a.half(), (torch.randn(out_features, rank, generator=gen) * 0.3).half())
    artifact = dataclasses.replace(make_artifact(shape, 6, 3, seed=4), lora=LoraWeights(0.75, modules))
    loaded = load_task(tiny_engine, artifact)
    rows = [(tiny_engine.encode([text], 6)[0], loaded) for text in TEXTS]
    for text, got in zip(TEXTS, score_rows(tiny_engine, rows)):
        assert close(got, merged_scores(tiny_backbone_dir, artifact, text)), text


def test_lora_bytes_count_in_the_task_and_go_back_to_the_pool(tiny_engine, tiny_backbone_dir, tmp_path):
    adapter = make_peft_adapter(tiny_backbone_dir, tmp_path / "adapter", r=8)
    prefix_only = make_artifact(tiny_engine.shape, 4, 3)
    both = dataclasses.replace(import_checkpoint(adapter, tiny_engine.shape), key_values=prefix_only.key_values)
    before = tiny_engine.lora_pool.used_units
    handle, plain = tiny_engine.load(both), tiny_engine.load(prefix_only)
    task = tiny_engine.task(handle)
    assert task.lora.units["qkv"].shape == (16,)  # query's 8 units, then value's 8, one row of A and of B each
    assert tiny_engine.lora_pool.used_units == before + 16
    assert task.nbytes == tiny_engine.task(plain).nbytes + 16 * tiny_engine.lora_pool.unit_bytes("qkv")
    tiny_engine.release_task(handle)
    del task
    gc.collect()
    assert tiny_engine.lora_pool.used_units == before


def _adapter(shape, seed: int, rank: int) -> LoraWeights:
    gen = torch.Generator().manual_seed(seed)
    C = shape.hidden_size
    return LoraWeights(1.5, {(layer, "attention.self.query"): (torch.randn(rank, C, generator=gen), torch.randn(C, rank, generator=gen))
                             for layer in range(shape.num_layers)})


@pytest.mark.parametrize("mode", ["runs", "blocks"])
def test_adapters_on_scattered_units_after_churn(tiny_backbone_dir, mode):
    """Adapters take consecutive units (read as views of the pool); once freeing has left no free
    range wide enough, a new adapter takes scattered units and batches gather them: same results."""
    engine = Engine.from_folder(tiny_backbone_dir)
    engine.lora_mode = mode
    base = make_artifact(engine.shape, 2, 3, seed=9)
    handles = [engine.load(dataclasses.replace(base, lora=_adapter(engine.shape, i, 4))) for i in range(15)]
    assert all(engine.task(h).lora.span("qkv") is not None for h in handles)
    assert engine.lora_pool.storage("qkv")[0].shape[1] == 64  # 15 x 4 of 63 usable units: no growth yet
    for handle in handles[1::2]:
        engine.release_task(handle)
    gc.collect()
    wide = dataclasses.replace(base, lora=_adapter(engine.shape, 99, 6))
    scattered = engine.load(wide)
    assert engine.task(scattered).lora.span("qkv") is None and engine.lora_pool.storage("qkv")[0].shape[1] == 64
    kept = dataclasses.replace(base, lora=_adapter(engine.shape, 0, 4))
    rows = [(engine.encode([text], 2)[0], handle) for text in TEXTS for handle in (scattered, handles[0])]
    together = engine.score_encoded(rows)
    for (encoded, handle), got in zip(rows, together):
        assert close(got, engine.score_encoded([(encoded, handle)])[0])
    for text, got in zip(TEXTS, together[::2]):
        assert close(got, merged_scores(tiny_backbone_dir, wide, text))
    for text, got in zip(TEXTS, together[1::2]):
        assert close(got, merged_scores(tiny_backbone_dir, kept, text))
