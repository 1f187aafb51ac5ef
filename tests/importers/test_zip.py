"""convert_peft_zip, the upload endpoint's path for a zipped PEFT folder: it converts what it
should and refuses unsafe archives without extracting anything."""

from __future__ import annotations

import io
import stat
import zipfile

import pytest
import torch

from server.artifact import read_artifact
from server.importers import CheckpointError, convert_peft_files, convert_peft_zip
from server.importers import zip as zip_module
from tests.importers.builders import peft_adapter_config, peft_files, random_encoder, random_head, zip_bytes


@pytest.fixture
def files(tiny_engine):
    shape = tiny_engine.shape
    with torch.no_grad():
        output = random_encoder(shape, 5, projection=False)(torch.arange(5)[None])
    return peft_files(output[0], random_head(shape, 2), peft_adapter_config(shape, 5), id2label=["neg", "pos"])


@pytest.mark.parametrize("root", ["", "my-adapter/", "outputs/checkpoint-500/"])
def test_zip_converts_like_the_folder(tiny_engine, files, root):
    data = zip_bytes({**files, "README.md": b"# adapter", "tokenizer.json": b"{}"}, root=root)
    artifact = read_artifact(convert_peft_zip(data, tiny_engine.shape), tiny_engine.shape)
    expected = convert_peft_files(files, tiny_engine.shape)
    assert torch.equal(artifact.key_values, expected.key_values)
    assert torch.equal(artifact.classifier_weight, expected.classifier_weight)
    assert artifact.labels == ("neg", "pos")


def test_labels_and_problem_type_as_strings(tiny_engine, files):
    data = convert_peft_zip(
        zip_bytes(files), tiny_engine.shape, labels=["a", "b"], problem_type="multi_label_classification"
    )
    artifact = read_artifact(data, tiny_engine.shape)
    assert artifact.labels == ("a", "b") and artifact.problem_type.value == "multi_label_classification"


def test_unknown_problem_type_is_an_artifact_error(tiny_engine, files):
    with pytest.raises(CheckpointError, match="problem_type: expected one of"):
        convert_peft_zip(zip_bytes(files), tiny_engine.shape, problem_type="ranking")


def _raw_zip(entries) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for info, data in entries:
            archive.writestr(info, data)
    return buffer.getvalue()


UNSAFE_NAMES = ["../adapter_config.json", "/etc/adapter_config.json", "a/../../x.json", "C:/x.json", "a\\b.json"]


@pytest.mark.parametrize("name", UNSAFE_NAMES)
def test_unsafe_member_names_are_refused(tiny_engine, files, name):
    data = _raw_zip([(name, b"{}"), ("adapter_config.json", files["adapter_config.json"])])
    with pytest.raises(CheckpointError, match="unsafe member path"):
        convert_peft_zip(data, tiny_engine.shape)


def test_symlinks_are_refused(tiny_engine, files):
    link = zipfile.ZipInfo("adapter_model.safetensors")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    data = _raw_zip([(link, "/etc/passwd"), ("adapter_config.json", files["adapter_config.json"])])
    with pytest.raises(CheckpointError, match="symbolic link"):
        convert_peft_zip(data, tiny_engine.shape)


def test_size_caps_hold_against_compressible_members(tiny_engine, files, monkeypatch):
    monkeypatch.setattr(zip_module, "MAX_TOTAL_BYTES", 1_000_000)
    data = zip_bytes({**files, "padding.bin": bytes(2_000_000)})
    assert len(data) < 50_000  # a small archive that claims much more
    with pytest.raises(CheckpointError, match="expected at most 1000000 bytes uncompressed"):
        convert_peft_zip(data, tiny_engine.shape)
    monkeypatch.setattr(zip_module, "MAX_ZIP_BYTES", 100)
    with pytest.raises(CheckpointError, match="expected at most 100 bytes"):
        convert_peft_zip(data, tiny_engine.shape)


def test_member_larger_than_its_header_claims_is_refused(tiny_engine, files):
    data = bytearray(zip_bytes(files, root=""))
    # Shrink the size the central directory records for adapter_config.json: the bytes then overflow it.
    archive = zipfile.ZipFile(io.BytesIO(bytes(data)))
    info = archive.getinfo("adapter_config.json")
    central = data.rfind(b"PK\x01\x02", 0, len(data))
    while central >= 0 and data[central + 46 : central + 46 + len(b"adapter_config.json")] != b"adapter_config.json":
        central = data.rfind(b"PK\x01\x02", 0, central)
    data[central + 24 : central + 28] = (info.file_size - 10).to_bytes(4, "little")
    # zipfile stops at the recorded size and the CRC then fails; either way nothing past it is read.
    with pytest.raises(CheckpointError, match=r"zip: (could not read adapter_config.json|adapter_config.json holds)"):
        convert_peft_zip(bytes(data), tiny_engine.shape)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda f: b"not a zip at all", "expected a zip archive"),
        (lambda f: zip_bytes({"README.md": b"x"}), "expected a PEFT adapter folder with adapter_config.json"),
        (lambda f: _two_adapters(f), "expected one adapter, found 2"),
        (lambda f: zip_bytes({"adapter_config.json": f["adapter_config.json"]}), "expected adapter_model.safetensors"),
    ],
)
def test_archives_that_are_not_one_adapter_are_refused(tiny_engine, files, make, message):
    with pytest.raises(CheckpointError, match=message):
        convert_peft_zip(make(files), tiny_engine.shape)


def test_a_zipped_pickle_is_never_unpickled(tiny_engine, monkeypatch):
    shape = tiny_engine.shape
    with torch.no_grad():
        output = random_encoder(shape, 5, projection=False)(torch.arange(5)[None])
    files = peft_files(output[0], random_head(shape, 2), peft_adapter_config(shape, 5), weights="bin")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("an uploaded pickle was loaded"))
    with pytest.raises(CheckpointError, match=r"expected adapter_model\.safetensors, got adapter_model\.bin"):
        convert_peft_zip(zip_bytes(files), shape)


def _two_adapters(files) -> bytes:
    entries = [(f"{root}/{name}", data) for root in ("one", "two") for name, data in files.items()]
    return _raw_zip(entries)
