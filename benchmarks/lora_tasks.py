"""Random LoRA tasks for the LoRA benchmarks: artifacts as `prefix-server import` makes them from a PEFT
adapter (SPEC 1c), with the rank, targets and head the benchmark asks for."""

from __future__ import annotations

import torch

from server.artifact import BackboneShape, PrefixArtifact, ProblemType
from server.artifact.lora import LoraWeights, module_features


def lora_artifact(shape: BackboneShape, seed: int, rank: int, targets: tuple[str, ...], num_labels: int = 3,
                  prefix_len: int = 0) -> PrefixArtifact:
    """A single-label task with LoRA of `rank` on `targets` in every layer (and a prefix of `prefix_len`
    when > 0), weights of a trained adapter's size."""
    gen = torch.Generator().manual_seed(seed)
    modules = {}
    for layer in range(shape.num_layers):
        for module in targets:
            in_features, out_features = module_features(module, shape.hidden_size, shape.intermediate_size)
            a = torch.randn(rank, in_features, generator=gen) / in_features**0.5
            modules[(layer, module)] = (a, torch.randn(out_features, rank, generator=gen) * 0.02)
    key_values = None
    if prefix_len:
        key_values = torch.randn(shape.num_layers, 2, shape.num_heads, prefix_len, shape.head_dim, generator=gen)
    return PrefixArtifact(
        key_values=key_values,
        classifier_weight=torch.randn(num_labels, shape.hidden_size, generator=gen) * 0.5,
        classifier_bias=torch.randn(num_labels, generator=gen) * 0.1,
        problem_type=ProblemType.SINGLE_LABEL,
        labels=tuple(f"label_{i}" for i in range(num_labels)),
        extra_metadata={"author": "prefix-server LoRA bench"},
        lora=LoraWeights(2.0, modules),
    )


def prefix_artifact(shape: BackboneShape, seed: int, prefix_len: int, num_labels: int = 3) -> PrefixArtifact:
    gen = torch.Generator().manual_seed(seed)
    return PrefixArtifact(
        key_values=torch.randn(shape.num_layers, 2, shape.num_heads, prefix_len, shape.head_dim, generator=gen),
        classifier_weight=torch.randn(num_labels, shape.hidden_size, generator=gen) * 0.5,
        classifier_bias=torch.randn(num_labels, generator=gen) * 0.1,
        problem_type=ProblemType.SINGLE_LABEL,
        labels=tuple(f"label_{i}" for i in range(num_labels)),
        extra_metadata={"author": "prefix-server LoRA bench"},
    )
