"""Converting checkpoints of other tools into prefix artifacts (`prefix-server import`).

Owns the PEFT PREFIX_TUNING and LORA adapters (folder or .zip; SEQ_CLS and TOKEN_CLS, BERT and RoBERTa)
and the original P-tuning v2 checkpoint readers (BERT and RoBERTa, sequence and token classification).
Every refusal is a `CheckpointError`, an `ArtifactError` whose message says why. Never imports the
API or batching layers.
"""

from __future__ import annotations

from pathlib import Path

import torch

from server.artifact import BackboneShape, HeadKind, PrefixArtifact, ProblemType, artifact_to_bytes, read_artifact
from server.importers.common import CheckpointError
from server.importers.peft import ADAPTER_CONFIG, convert_peft_files, read_peft_folder
from server.importers.peft_adapter import convert_peft_adapter
from server.importers.ptuning_v2 import convert_ptuning_v2, read_ptuning_v2
from server.importers.zip import convert_peft_zip, read_peft_zip


def import_checkpoint(
    source: str | Path,
    backbone: BackboneShape,
    labels: tuple[str, ...] | None = None,
    problem_type: ProblemType | None = None,
    backbone_weights: dict[str, torch.Tensor] | None = None,
    head: HeadKind | None = None,
) -> PrefixArtifact:
    """Detects the checkpoint kind of `source` (a folder, a .zip, or a weights file) and converts it
    into an artifact, validated as an upload is. `head` overrides the head kind of a P-tuning v2
    checkpoint (PEFT adapters name theirs: task_type). (An uploaded zip goes through convert_peft_zip:
    its bytes are validated once, by the registry that stores them.)"""
    artifact = _convert(Path(source), backbone, labels, problem_type, backbone_weights, head)
    read_artifact(artifact_to_bytes(artifact), backbone)  # the same checks an upload gets
    return artifact


def _convert(source: Path, backbone, labels, problem_type, backbone_weights, head) -> PrefixArtifact:
    if source.is_dir() and (source / ADAPTER_CONFIG).is_file():
        return convert_peft_adapter(read_peft_folder(source), backbone, labels, problem_type, source=source.name)
    if source.is_file() and source.suffix.lower() == ".zip":
        files = read_peft_zip(source.read_bytes())
        return convert_peft_adapter(files, backbone, labels, problem_type, source=source.name)
    if source.name.startswith("adapter_model") or (source.is_dir() and any(source.glob("adapter_model.*"))):
        raise CheckpointError(f"{source}: PEFT adapter weights need their {ADAPTER_CONFIG}: pass the adapter folder")
    return read_ptuning_v2(source, backbone, labels, problem_type, backbone_weights, head)


__all__ = [
    "CheckpointError",
    "convert_peft_adapter",
    "convert_peft_files",
    "convert_peft_zip",
    "convert_ptuning_v2",
    "import_checkpoint",
    "read_peft_zip",
    "read_ptuning_v2",
]
