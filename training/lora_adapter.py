"""The LoRA adapter being trained (`prefix-server train --method lora`): PEFT's LoRA on the engine's
own layers, so what is trained is what is served.

One `A [r, in]` and `B [out, r]` per (layer, targeted module), initialised as PEFT does (A Kaiming-
uniform, B zeros: the adapter starts as the identity), with dropout on its input in training, and
`scaling = alpha / r`. It implements the engine's LoraDeltas for every row of a batch (the model calls
it from each Linear, server/engine/lora.py); the fused query/key/value projection gets its deltas in
their column blocks. Exported, it is exactly the artifact's LoRA tensors and `lora_scaling` (SPEC 1c).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from server.artifact.lora import LoraWeights, module_features
from server.engine.backbone import BertGeometry
from server.engine.lora_pool import ENGINE_TARGETS


class TrainableLora(nn.Module):
    def __init__(self, g: BertGeometry, rank: int, alpha: float, targets: tuple[str, ...], dropout: float):
        super().__init__()
        self.scaling, self.targets = alpha / rank, targets
        self.dropout = nn.Dropout(dropout)
        self.a, self.b = nn.ParameterDict(), nn.ParameterDict()
        for layer in range(g.num_layers):
            for module in targets:
                in_features, out_features = module_features(module, g.hidden_size, g.intermediate_size)
                a = torch.empty(rank, in_features)
                nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # nn.Linear's, which PEFT keeps for lora_A
                self.a[_key(layer, module)] = nn.Parameter(a)
                self.b[_key(layer, module)] = nn.Parameter(torch.zeros(out_features, rank))
        self.by_engine_module: dict[str, list[tuple[int, str]]] = {}  # engine Linear -> [(column block, module)]
        for module in targets:
            engine_module, block = ENGINE_TARGETS[module]
            self.by_engine_module.setdefault(engine_module, []).append((block, module))

    def apply(self, y: torch.Tensor, x: torch.Tensor, layer: int, module: str) -> torch.Tensor:
        """y [T, out] + scaling * B A dropout(x), each targeted part in its column block (out of place)."""
        parts = self.by_engine_module.get(module)
        if not parts:
            return y
        width = y.shape[1] // 3 if module == "qkv" else y.shape[1]
        for block, spec_module in parts:
            key = _key(layer, spec_module)
            delta = (self.dropout(x) @ self.a[key].T) @ self.b[key].T * self.scaling  # [T, width]
            y = y + nn.functional.pad(delta, (block * width, y.shape[1] - (block + 1) * width))  # [T, out]
        return y

    @torch.no_grad()
    def weights(self) -> LoraWeights:
        modules = {}
        for key, a in self.a.items():
            layer, module = key.split("/", 1)
            modules[(int(layer), module.replace("|", "."))] = (a.detach().float().clone(), self.b[key].detach().float().clone())
        return LoraWeights(self.scaling, modules)


def _key(layer: int, module: str) -> str:
    return f"{layer}/{module.replace('.', '|')}"  # ParameterDict keys may not hold dots
