"""`prefix-server import`: converts a PEFT PREFIX_TUNING or LORA adapter (folder or .zip; SEQ_CLS,
TOKEN_CLS, QUESTION_ANS) or an original P-tuning v2 checkpoint (sequence, token, question answering,
multiple choice) into an artifact for a given backbone."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from server.artifact import ProblemType
from server.commands.train import parse_labels


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "import",
        help="convert a PEFT prefix-tuning or LoRA adapter or a P-tuning v2 checkpoint into an artifact",
        description="Convert a PEFT PREFIX_TUNING or LORA adapter (folder or .zip) or an original P-tuning v2 "
        "checkpoint (folder or weights file) into an artifact.",
    )
    parser.add_argument("source", type=Path, metavar="SRC", help="adapter folder, .zip, checkpoint folder or file")
    parser.add_argument("--out", type=Path, required=True, metavar="DST", help="the artifact to write (.safetensors)")
    parser.add_argument("--labels", type=parse_labels, help="label names in order (else the config's id2label)")
    parser.add_argument("--problem-type", type=ProblemType, choices=list(ProblemType), metavar="T",
                        help="single_label_classification, multi_label_classification or regression")
    parser.add_argument("--backbone", type=Path, metavar="DIR", help="BERT model folder (default: the embedded MiniLM)")
    parser.add_argument("--head", choices=["sequence", "token", "span", "choice"],
                        help="a P-tuning v2 checkpoint's head kind (else its config's architectures; "
                        "a multiple-choice checkpoint without them needs --head choice)")
    parser.set_defaults(func=run_import)


def run_import(args: argparse.Namespace) -> int:
    from server.artifact import ArtifactError, HeadKind, write_artifact
    from server.engine import BackboneError, read_backbone_folder
    from server.importers import import_checkpoint

    try:
        backbone = read_backbone_folder(args.backbone or _default_backbone())
        artifact = import_checkpoint(
            args.source, backbone.shape(), args.labels, args.problem_type, backbone_weights=backbone.state_dict,
            head=HeadKind(args.head) if args.head else None,
        )
    except (ArtifactError, BackboneError, OSError) as exc:
        print(f"prefix-server import: error: {exc}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_name(args.out.name + ".partial")
    write_artifact(artifact, partial)
    partial.replace(args.out)
    pinned = "pinned to this backbone" if artifact.backbone_fingerprint else "not pinned to a backbone"
    print(
        f"wrote {args.out} (P={artifact.prefix_len}, labels {list(artifact.labels)}, "
        f"{artifact.problem_type.value}, {artifact.head.value} head"
        f"{', own pooler' if artifact.pooler_weight is not None else ''}{_lora_summary(artifact)}, "
        f"{artifact.extra_metadata.get('source_format')}, {pinned})"
    )
    return 0


def _lora_summary(artifact) -> str:
    if artifact.lora is None:
        return ""
    modules = sorted({module for _, module in artifact.lora.modules})
    ranks = sorted({a.shape[0] for a, _ in artifact.lora.modules.values()})
    return f", LoRA rank {'/'.join(map(str, ranks))} on {', '.join(modules)} (scaling {artifact.lora.scaling:g})"


def _default_backbone() -> Path:
    from server.engine.backbone import default_backbone_dir

    return default_backbone_dir()
