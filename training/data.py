"""Training data: reads JSONL / JSON / CSV / TSV rows and resolves their labels into targets.

A row has `text`, an optional `text_pair`, and `label`: an index or a name (single-label), a list of
names (multi-label), or a number (regression). One file holds one kind of label. Label names come
from `--labels`, or else from the training data in sorted order, so the order does not depend on how
the rows happen to be shuffled. Every refusal is a `DataError` naming the file, the line and what
was expected.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from server.artifact import ProblemType

REGRESSION_LABEL = "score"
_KIND_NAMES = {"index": "an index", "name": "a name", "names": "a list of names", "number": "a number"}
_KINDS_FOR = {
    ProblemType.SINGLE_LABEL: ({"index"}, {"name"}),
    ProblemType.MULTI_LABEL: ({"names"},),
    ProblemType.REGRESSION: ({"number"}, {"index"}, {"number", "index"}),
}


class DataError(ValueError):
    """Training or eval data was refused; the message says where and why."""


@dataclass(frozen=True)
class RawRow:
    where: str  # "file:line", for messages
    text: str
    text_pair: str | None
    label: object


@dataclass(frozen=True)
class Dataset:
    source: Path
    inputs: list  # TextInput per row: a text or (text, text_pair)
    targets: torch.Tensor  # [N] long (single-label), [N, C] float (multi-label, regression)
    labels: tuple[str, ...]
    problem_type: ProblemType

    def __len__(self) -> int:
        return len(self.inputs)


def load_dataset(
    path: str | Path,
    labels: tuple[str, ...] | None = None,
    problem_type: ProblemType | None = None,
) -> Dataset:
    """Reads `path`; `labels` and `problem_type` fix the label space (pass the train set's for eval)."""
    path = Path(path)
    rows = read_rows(path)
    kinds = _label_kinds(rows)
    problem_type = _problem_type(kinds, problem_type, path)
    if labels is None:
        labels = _collect_labels(rows, kinds, problem_type)
    elif problem_type is ProblemType.REGRESSION and len(labels) != 1:
        raise DataError(f"--labels: regression expected one output name, got {len(labels)}: {list(labels)}")
    if problem_type is ProblemType.SINGLE_LABEL and len(labels) < 2:
        raise DataError(
            f"{path.name}: single-label classification expected at least 2 labels, got {list(labels)} "
            "(name them all with --labels)"
        )
    targets = _targets(rows, labels, problem_type)
    inputs = [row.text if row.text_pair is None else (row.text, row.text_pair) for row in rows]
    return Dataset(path, inputs, targets, tuple(labels), problem_type)


def read_rows(path: Path) -> list[RawRow]:
    if not path.is_file():
        raise DataError(f"{path}: expected a data file, got no such file")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        records = _read_delimited(path, "\t" if suffix == ".tsv" else ",")
    elif suffix in (".jsonl", ".json", ".ndjson"):
        records = _read_json(path)
    else:
        raise DataError(f"{path}: expected a .jsonl, .json, .csv or .tsv file, got {suffix or 'no extension'}")
    rows = [_to_row(record, f"{path.name}:{line}") for line, record in records]
    if not rows:
        raise DataError(f"{path}: expected at least one row, got none")
    return rows


def _read_json(path: Path) -> list[tuple[int, object]]:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            return [(i + 1, record) for i, record in enumerate(json.loads(text))]
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: expected a JSON array of rows, got invalid JSON ({exc})") from None
    records = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append((line_number, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path.name}:{line_number}: expected one JSON object per line ({exc})") from None
    return records


def _read_delimited(path: Path, delimiter: str) -> list[tuple[int, object]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        if reader.fieldnames is None:
            return []
        missing = [c for c in ("text", "label") if c not in reader.fieldnames]
        if missing:
            raise DataError(f"{path.name}: expected a header with text and label columns, missing {missing}")
        # Line numbers count the header as line 1.
        return [(i + 2, {**r, "label": _parse_cell(r.get("label"))}) for i, r in enumerate(reader)]


def _parse_cell(cell: str | None) -> object:
    """A CSV cell is always text: read it as an index, a number or a JSON list when it looks like one."""
    if cell is None:
        return None
    cell = cell.strip()
    for parse in (int, float):
        try:
            return parse(cell)
        except ValueError:
            pass
    if cell.startswith("["):
        try:
            return json.loads(cell)
        except json.JSONDecodeError:
            pass
    return cell


def _to_row(record: object, where: str) -> RawRow:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected an object with text and label, got {type(record).__name__}")
    text, pair = record.get("text"), record.get("text_pair")
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: expected 'text' to be a non-empty string, got {text!r}")
    if pair in ("", None):
        pair = None
    elif not isinstance(pair, str):
        raise DataError(f"{where}: expected 'text_pair' to be a string, got {type(pair).__name__}")
    if "label" not in record or record["label"] in (None, ""):
        raise DataError(f"{where}: expected a 'label', got none")
    return RawRow(where, text, pair, record["label"])


def _kind(row: RawRow) -> str:
    label = row.label
    if isinstance(label, bool):
        raise DataError(f"{row.where}: expected an index, name, list of names or number as label, got {label!r}")
    if isinstance(label, int):
        return "index"
    if isinstance(label, float):
        return "number"
    if isinstance(label, str):
        return "name"
    if isinstance(label, list) and all(isinstance(x, str) and x for x in label):
        return "names"
    raise DataError(f"{row.where}: expected an index, name, list of names or number as label, got {label!r}")


def _label_kinds(rows: list[RawRow]) -> dict[str, str]:
    """Each kind of label present, with where it was first seen."""
    first_seen: dict[str, str] = {}
    for row in rows:
        first_seen.setdefault(_kind(row), row.where)
    return first_seen


def _problem_type(kinds: dict[str, str], given: ProblemType | None, path: Path) -> ProblemType:
    present = set(kinds)
    candidates = [given] if given is not None else list(ProblemType)
    for problem_type in candidates:
        if any(present == allowed for allowed in _KINDS_FOR[problem_type]):
            return problem_type
    seen = ", ".join(f"{_KIND_NAMES[k]} ({where})" for k, where in kinds.items())
    if given is not None:
        wanted = " or ".join(sorted({_KIND_NAMES[k] for s in _KINDS_FOR[given] for k in s}))
        raise DataError(f"{path.name}: --problem-type {given.value} expected labels that are {wanted}, got {seen}")
    raise DataError(f"{path.name}: mixed label kinds: expected one kind of label per file, got {seen}")


def _collect_labels(rows: list[RawRow], kinds: dict[str, str], problem_type: ProblemType) -> tuple[str, ...]:
    if problem_type is ProblemType.REGRESSION:
        return (REGRESSION_LABEL,)
    if "index" in kinds:
        negative = next((row for row in rows if row.label < 0), None)
        if negative is not None:
            raise DataError(f"{negative.where}: expected a label index >= 0, got {negative.label}")
        return tuple(str(i) for i in range(max(row.label for row in rows) + 1))
    names: set[str] = set()
    for row in rows:
        names.update(row.label if isinstance(row.label, list) else [row.label])
    if not names:
        raise DataError("multi-label data: expected at least one label name in the rows, got only empty lists")
    return tuple(sorted(names))


def _targets(rows: list[RawRow], labels: tuple[str, ...], problem_type: ProblemType) -> torch.Tensor:
    if problem_type is ProblemType.REGRESSION:
        return torch.tensor([[float(row.label)] for row in rows], dtype=torch.float32)  # [N, 1]
    index = {name: i for i, name in enumerate(labels)}
    if problem_type is ProblemType.SINGLE_LABEL:
        return torch.tensor([_label_index(row, row.label, index, labels) for row in rows], dtype=torch.long)  # [N]
    multi_hot = torch.zeros(len(rows), len(labels))  # [N, C]
    for i, row in enumerate(rows):
        for name in row.label:
            multi_hot[i, _label_index(row, name, index, labels)] = 1.0
    return multi_hot


def _label_index(row: RawRow, label: object, index: dict[str, int], labels: tuple[str, ...]) -> int:
    if isinstance(label, int):
        if not 0 <= label < len(labels):
            raise DataError(f"{row.where}: label index expected 0..{len(labels) - 1} ({list(labels)}), got {label}")
        return label
    if label not in index:
        shown = list(labels) if len(labels) <= 20 else list(labels[:20]) + ["..."]
        raise DataError(
            f"{row.where}: unknown label {label!r}: expected one of {shown} "
            "(labels come from --labels, or else from the training data)"
        )
    return index[label]
