"""`prefix-server train`: trains a P-tuning v2 prefix, a LoRA adapter or both, and a head, on the
server's own model code, writes the artifact, and optionally uploads it (`PUT /v1/tasks/{task}`)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from server.artifact import ProblemType
from server.artifact.lora import ADAPTATIONS, DEFAULT_TARGETS, parse_targets
from server.settings import API_KEY_VARIABLE, require_extra

EPILOG = """\
data: JSONL, JSON, CSV or TSV rows with `text`, optional `text_pair`, and `label`: an index or a
name (single-label), a list of names (multi-label) or a number (regression). With --head token:
JSONL rows {"tokens": [word, ...], "tags": [tag, ...]} (IOB2 tags such as B-PER, I-PER, O score
as entities, with seqeval's micro F1). With --head span: SQuAD data (the official JSON, or JSON lines of
paragraphs {"context", "qas"} or of questions {"question", "context", "answers"}), scored with SQuAD's
exact match and F1. With --head choice: JSONL rows {"text", "choices": [...], "label": index}, scored
by accuracy.
examples:
  prefix-server train --train sst2.train.jsonl --eval sst2.dev.jsonl --labels negative,positive \\
      --prefix-len 16 --lr 3e-2 --steps 1000 --dtype float16 --out sentiment.safetensors
  prefix-server train --head token --train conll03.train.jsonl --eval conll03.dev.jsonl \\
      --prefix-len 16 --lr 3e-2 --steps 1200 --dtype float16 --out entities.safetensors
  prefix-server train --head span --train squad.train.jsonl --eval squad.eval.jsonl --max-length 192 \\
      --doc-stride 64 --prefix-len 16 --lr 3e-2 --steps 900 --batch-size 16 --dtype float16 --out answers.safetensors
  prefix-server train --head choice --train copa.train.jsonl --eval copa.dev.jsonl \\
      --prefix-len 16 --lr 3e-2 --steps 500 --batch-size 16 --dtype float16 --out plausible-choice.safetensors
  prefix-server train --method lora --lora-rank 8 --lora-alpha 16 --lora-targets query,value \\
      --train sst2.train.jsonl --eval sst2.dev.jsonl --lr 1e-3 --steps 1000 --out sentiment-lora.safetensors
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a prefix (P-tuning v2) and write an artifact",
        description="Train a deep prefix and a classifier head on a frozen backbone, export an artifact.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument("--train", type=Path, required=True, metavar="FILE", help="training rows")
    data.add_argument("--eval", type=Path, metavar="FILE", help="rows scored at the end (accuracy, F1, ...)")
    data.add_argument("--out", type=Path, required=True, metavar="FILE", help="the artifact to write (.safetensors)")
    data.add_argument("--labels", type=parse_labels, help="label names in order, comma-separated (else from the data)")
    data.add_argument("--problem-type", type=ProblemType, choices=list(ProblemType), metavar="T",
                      help="single_label_classification, multi_label_classification or regression "
                      "(else from the kind of labels)")
    data.add_argument("--max-length", type=int, default=128, metavar="N", help="tokens per training row (default 128)")
    data.add_argument("--doc-stride", type=int, default=128, metavar="N",
                      help="span heads: context tokens that consecutive training windows share (default 128)")
    model = parser.add_argument_group("model")
    model.add_argument("--head", choices=["sequence", "token", "span", "choice"], default="sequence",
                       help="sequence: one label per input (default); token: a label per word (NER); "
                       "span: extractive question answering; choice: multiple choice")
    model.add_argument("--backbone", type=Path, metavar="DIR", help="BERT model folder (default: the embedded MiniLM)")
    model.add_argument("--method", choices=list(ADAPTATIONS), default="prefix",
                       help="what adapts the frozen backbone: a deep prefix (default), a LoRA adapter, or both")
    model.add_argument("--prefix-len", type=int, default=16, metavar="N", help="prefix length P (default 16)")
    model.add_argument("--projection", action="store_true", help="reparameterise the prefix through a tanh MLP")
    model.add_argument("--projection-hidden", type=int, default=512, metavar="N", help="the MLP's width (default 512)")
    model.add_argument("--dropout", type=float, metavar="X", help="prefix and head dropout (default: the backbone's)")
    model.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                       help="dtype of prefix.key_values in the artifact (default float32)")
    model.add_argument("--lora-rank", type=int, default=8, metavar="R", help="LoRA rank r, 1..64 (default 8)")
    model.add_argument("--lora-alpha", type=float, default=16.0, metavar="A", help="LoRA alpha: scaling = alpha / r (default 16)")
    model.add_argument("--lora-targets", type=_targets, default=DEFAULT_TARGETS, metavar="M,...",
                       help="the layers' Linears to adapt: query,key,value,attention.output.dense,intermediate.dense,"
                       "output.dense, or all (default query,value)")
    model.add_argument("--lora-dropout", type=float, default=0.1, metavar="X", help="dropout on LoRA's input (default 0.1)")
    run = parser.add_argument_group("optimisation")
    length = run.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, metavar="N", help="optimizer steps")
    length.add_argument("--epochs", type=float, metavar="N", help="passes over the data (default 3)")
    run.add_argument("--batch-size", type=int, default=32, metavar="N", help="rows per step (default 32)")
    run.add_argument("--lr", type=float, default=1e-2, metavar="X", help="AdamW learning rate (default 1e-2)")
    run.add_argument("--weight-decay", type=float, default=0.0, metavar="X", help="AdamW weight decay (default 0)")
    run.add_argument("--warmup-ratio", type=float, default=0.06, metavar="X", help="warm-up share of steps (0.06)")
    run.add_argument("--seed", type=int, default=42, metavar="N", help="seed of init, shuffling, dropout (default 42)")
    run.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: torch's)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    upload = parser.add_argument_group("upload (optional)")
    upload.add_argument("--upload", metavar="URL", help="server base URL, e.g. http://127.0.0.1:8000")
    upload.add_argument("--task", metavar="NAME", help="task name to upload as")
    upload.add_argument("--api-key", metavar="K", help=f"bearer key (default: ${API_KEY_VARIABLE})")
    parser.set_defaults(func=run_train)


def parse_labels(value: str) -> tuple[str, ...]:
    labels = tuple(name.strip() for name in value.split(","))
    if not all(labels):
        raise argparse.ArgumentTypeError(f"expected comma-separated non-empty names, got {value!r}")
    if len(set(labels)) != len(labels):
        raise argparse.ArgumentTypeError(f"expected distinct names, got {value!r}")
    return labels


def _targets(value: str) -> tuple[str, ...]:
    try:
        return parse_targets(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run_train(args: argparse.Namespace) -> int:
    import torch

    from server.artifact import write_artifact
    from server.engine import BackboneError
    from training import DataError, UploadError, train, upload_artifact
    from training.choice_trainer import train_choice
    from training.span_trainer import train_span
    from training.token_trainer import train_token
    from training.upload import check_upload_target

    api_key = args.api_key or os.environ.get(API_KEY_VARIABLE)
    try:
        require_extra("tqdm", "train", "prefix-server train")
        if args.head == "token":
            require_extra("seqeval", "train", "prefix-server train --head token")
        if args.head == "span":
            require_extra("torchmetrics", "train", "prefix-server train --head span")
        if args.upload:  # before minutes of training: the server, the key, the task name, the backbone
            check_upload_target(args.upload, args.task or "", api_key, _backbone_fingerprint(args.backbone))
        elif args.task:
            raise ValueError("--task: given without --upload")
        if args.threads:
            torch.set_num_threads(args.threads)
        trainers = {"sequence": train, "token": train_token, "span": train_span, "choice": train_choice}
        result = trainers[args.head](_config(args), progress=not args.quiet)
    except (DataError, BackboneError, UploadError, ValueError, OSError) as exc:
        return _fail(exc)
    _write_atomically(args.out, result.artifact, write_artifact)
    print(_summary(args.out, result))
    if not args.upload:
        return 0
    try:
        answer = upload_artifact(args.upload, args.task, args.out.read_bytes(), api_key)
    except (UploadError, ValueError) as exc:
        return _fail(exc)
    print(f"uploaded {args.task} version {answer.version} (sha256 {answer.sha256})")
    return 0


def _backbone_fingerprint(folder: Path | None) -> str:
    """The fingerprint the trained artifact will carry, which the server checks (SPEC 1)."""
    from server.engine.backbone import default_backbone_dir, read_backbone_folder

    return read_backbone_folder(folder or default_backbone_dir()).fingerprint


def _config(args: argparse.Namespace):
    from training import TrainConfig

    return TrainConfig(
        train=args.train, eval=args.eval, backbone=args.backbone, labels=args.labels,
        problem_type=args.problem_type, prefix_len=args.prefix_len, projection=args.projection,
        projection_hidden=args.projection_hidden, steps=args.steps, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        warmup_ratio=args.warmup_ratio, max_length=args.max_length, doc_stride=args.doc_stride, dropout=args.dropout,
        seed=args.seed, dtype=args.dtype, method=args.method, lora_rank=args.lora_rank, lora_alpha=args.lora_alpha,
        lora_targets=args.lora_targets, lora_dropout=args.lora_dropout,
    )


def _write_atomically(path: Path, artifact, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    write(artifact, partial)
    partial.replace(path)  # a reader never sees half a file


def _summary(path: Path, result) -> str:
    a = result.artifact
    line = (
        f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB, P={a.prefix_len}{_lora(a)}, {len(a.labels)} labels, "
        f"{a.problem_type.value}{'' if a.head.value == 'sequence' else f', {a.head.value} head'}): "
        f"{result.steps} steps in {result.seconds:.0f} s"
    )
    shown = {k: v for k, v in result.metrics.items() if not isinstance(v, dict)}
    if shown:
        line += "\neval: " + ", ".join(f"{k} {v:.4f}" for k, v in shown.items())
    per_type = result.metrics.get("f1_per_type")  # token heads: entity F1 per type
    if per_type:
        line += "\nF1 per type: " + ", ".join(f"{k} {v:.4f}" for k, v in per_type.items())
    return line


def _lora(artifact) -> str:
    if artifact.lora is None:
        return ""
    ranks = {a.shape[0] for a, _ in artifact.lora.modules.values()}
    return f", LoRA r={'/'.join(map(str, sorted(ranks)))} on {len(artifact.lora.modules)} Linears"


def _fail(exc: BaseException) -> int:
    print(f"prefix-server train: error: {exc}", file=sys.stderr)
    return 2
