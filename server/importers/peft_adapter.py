"""A PEFT adapter folder's files -> an artifact, by its `peft_type`: `PREFIX_TUNING` (peft.py) or
`LORA` (peft_lora.py). The one entry point of `prefix-server import` and of zip uploads."""

from __future__ import annotations

from server.artifact import BackboneShape, PrefixArtifact, ProblemType
from server.importers.common import CheckpointError, parse_json
from server.importers.peft import ADAPTER_CONFIG, convert_peft_files
from server.importers.peft_lora import convert_peft_lora


def convert_peft_adapter(
    files: dict[str, bytes],
    backbone: BackboneShape,
    labels: tuple[str, ...] | None = None,
    problem_type: ProblemType | None = None,
    source: str = "peft adapter",
) -> PrefixArtifact:
    """`files`: file name -> bytes, from a folder or a zip (peft.WANTED_FILES)."""
    if ADAPTER_CONFIG not in files:
        raise CheckpointError(f"{source}: expected {ADAPTER_CONFIG} beside the adapter weights, found none")
    config = parse_json(files[ADAPTER_CONFIG], ADAPTER_CONFIG)
    if config.get("peft_type") == "LORA":
        return convert_peft_lora(files, config, backbone, labels, problem_type, source)
    return convert_peft_files(files, backbone, labels, problem_type, source)
