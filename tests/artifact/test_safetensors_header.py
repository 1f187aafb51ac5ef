"""The hand-parsed safetensors header: a file that is not safetensors, or whose header lies about its
buffer, is refused with an ArtifactError before any tensor is built, nothing is unpickled, and a
header claiming a huge tensor allocates nothing."""

from __future__ import annotations

import io
import os
import pickle
import struct
import tracemalloc
import zipfile

import pytest
import torch

from server.artifact import ArtifactError, read_artifact
from server.artifact.safetensors_header import MAX_HEADER_BYTES, parse_header
from tests.artifact.builders import SHAPE, craft, entry, save_file


def refused(data: bytes, *fragments: str) -> str:
    """Asserts both the header parser and the full reader refuse `data`, the message holding each fragment."""
    with pytest.raises(ArtifactError) as parsed:
        parse_header(data)
    with pytest.raises(ArtifactError):
        read_artifact(data, SHAPE)
    message = str(parsed.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


# --- not a safetensors file at all ---------------------------------------------------------------


def test_empty_file():
    refused(b"", "expected an 8-byte header length", "got a file of 0 bytes")


def test_seven_bytes():
    refused(b"\x01" * 7, "expected an 8-byte header length", "got a file of 7 bytes")


@pytest.mark.parametrize("claimed", [2**63, 2**64 - 1, 10**9])
def test_absurd_header_length(claimed):
    refused(struct.pack("<Q", claimed) + b"{}", f"claims {claimed} bytes", "the file holds 2")


def test_header_longer_than_the_cap_even_if_the_file_holds_it():
    header = b"{" + b" " * MAX_HEADER_BYTES + b"}"  # valid JSON, but past the 16 MiB cap
    refused(craft(None, header_bytes=header), f"expected at most {MAX_HEADER_BYTES} bytes", str(len(header)))


def test_truncated_header():
    data = save_file()
    refused(data[:20], "the header claims", "truncated")


def test_truncated_body():
    data = save_file()
    refused(data[:-10], "do not lie inside")


@pytest.mark.parametrize(
    "header_bytes, expected",
    [
        (b"this is not json", "not UTF-8 JSON"),
        (b"\xff\xfe\x00{}", "not UTF-8 JSON"),
        (b'{"a": 1', "not UTF-8 JSON"),
    ],
)
def test_header_not_json(header_bytes, expected):
    refused(craft(None, header_bytes=header_bytes), expected)


@pytest.mark.parametrize("header, type_name", [([], "list"), (42, "int"), ("text", "str"), (None, "NoneType")])
def test_header_json_not_an_object(header, type_name):
    refused(craft(header), "expected a JSON object header", f"got {type_name}")


def test_deeply_nested_header_is_refused_not_a_crash():
    """json.loads raises RecursionError on deep nesting: it must become an ArtifactError, not a 500."""
    refused(craft(None, header_bytes=b"[" * 100_000), "not UTF-8 JSON")


def test_integer_past_pythons_digit_limit_is_refused_not_a_crash():
    refused(craft(None, header_bytes=b'{"a": ' + b"1" * 5000 + b"}"), "not UTF-8 JSON")


# --- pickles and zips: refused, and never unpickled -----------------------------------------------


class _WritesAFile:
    """Unpickling this runs os.system: if validation ever unpickled, the marker file would appear."""

    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def evil(tmp_path):
    payload = _WritesAFile()
    payload.marker = str(tmp_path / "pwned")
    return payload, tmp_path / "pwned"


@pytest.fixture
def no_unpickling(monkeypatch):
    """Any unpickling during validation fails the test outright."""

    def forbidden(*args, **kwargs):
        raise AssertionError("validation must never unpickle")

    for module, name in [(pickle, "loads"), (pickle, "load"), (pickle, "Unpickler"), (torch, "load")]:
        monkeypatch.setattr(module, name, forbidden)


def _torch_save(obj, zip_format: bool) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=zip_format)
    return buffer.getvalue()


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_raw_pickle_is_refused_and_not_run(evil, no_unpickling, protocol):
    payload, marker = evil
    data = pickle.dumps({"prefix.key_values": payload}, protocol=protocol)
    refused(data, "not a safetensors file")
    assert not marker.exists()


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_torch_save_output_is_refused_and_not_run(evil, no_unpickling, zip_format):
    payload, marker = evil
    data = _torch_save({"prefix.key_values": torch.zeros(2, 2), "x": payload}, zip_format)
    refused(data, "not a safetensors file")
    assert not marker.exists()


def test_torch_save_of_plain_tensors_is_refused():
    refused(_torch_save({"prefix.key_values": torch.zeros(3)}, True), "not a safetensors file")


def test_zip_is_refused():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("model.safetensors", save_file())
    refused(buffer.getvalue(), "not a safetensors file", "zip")


# --- headers that lie about the buffer ------------------------------------------------------------


def test_overlapping_data_offsets():
    header = {"a": entry("F32", [4], 0, 16), "b": entry("F32", [4], 8, 24)}
    refused(craft(header, bytes(24)), "'a' and 'b' overlap")


def test_identical_data_offsets_overlap():
    header = {"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 0, 8)}
    refused(craft(header, bytes(8)), "overlap")


@pytest.mark.parametrize(
    "offsets",
    [[0, 1000], [8, 4], [-4, 4], [0], [0, 8, 16], "0-8", [0.0, 8.0], [False, True]],
    ids=["past-end", "reversed", "negative", "one", "three", "string", "floats", "bools"],
)
def test_out_of_range_or_malformed_data_offsets(offsets):
    header = {"a": {"dtype": "F32", "shape": [2], "data_offsets": offsets}}
    refused(craft(header, bytes(8)), "'a'", "do not lie inside the 8-byte data buffer")


def test_offsets_span_must_match_shape_and_dtype():
    header = {"a": entry("F32", [3], 0, 8)}
    refused(craft(header, bytes(8)), "shape [3] in F32 needs 12 bytes, the offsets span 8")


@pytest.mark.parametrize("shape", [[10**9], [10**6, 10**6, 10**6], [2**62, 4]])
def test_huge_claimed_tensor_is_refused_without_allocating(shape):
    header = {"prefix.key_values": entry("F32", shape, 0, 4 * 10**9)}
    data = craft(header, bytes(64))
    tracemalloc.start()
    try:
        refused(data, "do not lie inside the 64-byte data buffer")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, f"refusing a {shape} header allocated {peak} bytes"


def test_huge_claimed_tensor_with_small_offsets_is_refused_by_size():
    header = {"a": entry("F32", [10**9], 0, 16)}
    refused(craft(header, bytes(16)), "needs 4000000000 bytes, the offsets span 16")


@pytest.mark.parametrize("dtype", ["F128", "float32", "", None, ["F32"], {"F32": 1}])
def test_unknown_or_malformed_dtype(dtype):
    """A list or object dtype once raised TypeError (unhashable) instead of an ArtifactError."""
    header = {"a": {"dtype": dtype, "shape": [2], "data_offsets": [0, 8]}}
    refused(craft(header, bytes(8)), "'a'", "unknown safetensors dtype")


@pytest.mark.parametrize("shape", [[-1], [2.0], ["2"], 2, None, [True, 2]])
def test_malformed_shape(shape):
    header = {"a": {"dtype": "F32", "shape": shape, "data_offsets": [0, 8]}}
    refused(craft(header, bytes(8)), "expected a shape of non-negative integers", f"got {shape!r}")


def test_entry_not_an_object():
    refused(craft({"a": [1, 2, 3]}, bytes(8)), "'a': expected an object with dtype, shape, data_offsets")


@pytest.mark.parametrize("metadata", [["a"], {"labels": ["a", "b"]}, {"n": 1}, "text"])
def test_metadata_must_map_strings_to_strings(metadata):
    refused(craft({"__metadata__": metadata}), "expected a JSON object of string to string")


# --- what a valid header gives back -------------------------------------------------------------


def test_valid_header_is_parsed():
    data = save_file(metadata={"format": "ptv2-prefix", "author": "me", "accuracy": "0.91"})
    header = parse_header(data)
    assert set(header.tensors) == {"prefix.key_values", "classifier.weight", "classifier.bias"}
    key_values = header.tensors["prefix.key_values"]
    assert (key_values.dtype, key_values.shape) == ("F32", (2, 2, 4, 4, 8))
    assert key_values.end - key_values.start == 2 * 2 * 4 * 4 * 8 * 4
    assert header.metadata == {"format": "ptv2-prefix", "author": "me", "accuracy": "0.91"}
    (header_len,) = struct.unpack("<Q", data[:8])
    assert header.data_offset == 8 + header_len


def test_header_without_metadata_or_tensors():
    header = parse_header(craft({}))
    assert header.tensors == {} and header.metadata == {}


def test_zero_sized_tensor_is_not_an_overlap():
    header = {"empty": entry("F32", [0], 8, 8), "a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 8, 16)}
    assert set(parse_header(craft(header, bytes(16))).tensors) == {"empty", "a", "b"}
