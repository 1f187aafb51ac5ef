"""A PEFT adapter folder sent as a .zip (the upload endpoint's path): `convert_peft_zip`.

The archive comes from a user, so it is read in memory only (nothing is extracted to disk), its
size and member count are bounded, every member name must be a plain relative path (no `..`, no
absolute path, no symlink, no encryption), and each member's bytes are read with a cap, so a lying
header or a zip bomb cannot allocate more than the caps. Weights must be safetensors: an upload is
never unpickled (`prefix-server import` of a local folder may read a PEFT `adapter_model.bin`).
"""

from __future__ import annotations

import io
import posixpath
import stat
import zipfile

from server.artifact import BackboneShape, ProblemType, artifact_to_bytes
from server.importers.common import CheckpointError
from server.importers.peft import ADAPTER_CONFIG, WANTED_FILES
from server.importers.peft_adapter import convert_peft_adapter

MAX_ZIP_BYTES = 256 * 1024 * 1024
MAX_MEMBER_BYTES = 256 * 1024 * 1024  # one adapter file; a BERT-large prefix of P=512 is ~100 MB
MAX_TOTAL_BYTES = 1024 * 1024 * 1024  # everything the archive claims to hold, read or not
MAX_MEMBERS = 1000


def convert_peft_zip(
    data: bytes,
    backbone: BackboneShape,
    labels: tuple[str, ...] | list[str] | None = None,
    problem_type: ProblemType | str | None = None,
) -> bytes:
    """Converts a zipped PEFT PREFIX_TUNING or LORA folder into artifact bytes; raises CheckpointError."""
    try:
        problem_type = ProblemType(problem_type) if problem_type is not None else None
    except ValueError:
        allowed = [p.value for p in ProblemType]
        raise CheckpointError(f"problem_type: expected one of {allowed}, got {problem_type!r}") from None
    files = read_peft_zip(data)
    if "adapter_model.bin" in files and "adapter_model.safetensors" not in files:
        raise CheckpointError(
            "zip: expected adapter_model.safetensors, got adapter_model.bin: an upload is never unpickled; "
            "save the adapter with save_pretrained(..., safe_serialization=True), or run `prefix-server import` "
            "on it where it was made and upload the artifact"
        )
    labels = tuple(labels) if labels is not None else None
    return artifact_to_bytes(convert_peft_adapter(files, backbone, labels, problem_type, source="uploaded zip"))


def read_peft_zip(data: bytes) -> dict[str, bytes]:
    """The adapter's files (see WANTED_FILES) from the folder in the zip that holds adapter_config.json."""
    if len(data) > MAX_ZIP_BYTES:
        raise CheckpointError(f"zip: expected at most {MAX_ZIP_BYTES} bytes, got {len(data)}")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError) as exc:
        raise CheckpointError(f"expected a zip archive of a PEFT adapter folder, could not open it ({exc})") from None
    with archive:
        members = [info for info in archive.infolist() if not info.is_dir()]
        _check_members(members)
        root = _adapter_root(members)
        by_name = {info.filename: info for info in members}
        files = {}
        for name in WANTED_FILES:
            info = by_name.get(posixpath.join(root, name) if root else name)
            if info is not None:
                files[name] = _read_member(archive, info)
        return files


def _check_members(members: list[zipfile.ZipInfo]) -> None:
    if len(members) > MAX_MEMBERS:
        raise CheckpointError(f"zip: expected at most {MAX_MEMBERS} files, got {len(members)}")
    total = sum(info.file_size for info in members)
    if total > MAX_TOTAL_BYTES:
        raise CheckpointError(f"zip: expected at most {MAX_TOTAL_BYTES} bytes uncompressed, the archive claims {total}")
    for info in members:
        name = info.filename
        parts = name.split("/")
        if name.startswith("/") or "\\" in name or ":" in parts[0] or ".." in parts or "" in parts[:-1]:
            raise CheckpointError(f"zip: unsafe member path {name!r}: expected a plain relative path")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise CheckpointError(f"zip: member {name!r} is a symbolic link; expected plain files")
        if info.flag_bits & 0x1:
            raise CheckpointError(f"zip: member {name!r} is encrypted; expected plain files")


def _adapter_root(members: list[zipfile.ZipInfo]) -> str:
    configs = [
        info.filename
        for info in members
        if posixpath.basename(info.filename) == ADAPTER_CONFIG and not info.filename.startswith("__MACOSX/")
    ]
    if not configs:
        raise CheckpointError(f"zip: expected a PEFT adapter folder with {ADAPTER_CONFIG}, found none in the archive")
    if len(configs) > 1:
        raise CheckpointError(f"zip: expected one adapter, found {len(configs)} {ADAPTER_CONFIG} files: {configs[:5]}")
    return posixpath.dirname(configs[0])


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    if info.file_size > MAX_MEMBER_BYTES:
        raise CheckpointError(
            f"zip: {info.filename} expected at most {MAX_MEMBER_BYTES} bytes, its header claims {info.file_size}"
        )
    try:
        with archive.open(info) as handle:
            # Never trust the header's size: read at most one byte past it and compare.
            data = handle.read(info.file_size + 1)
    except (zipfile.BadZipFile, NotImplementedError, RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"zip: could not read {info.filename} ({exc})") from None
    if len(data) != info.file_size:
        raise CheckpointError(f"zip: {info.filename} holds {len(data)}+ bytes, its header claims {info.file_size}")
    return data
