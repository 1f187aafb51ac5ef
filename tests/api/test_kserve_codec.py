"""The KServe v2 body codec on its own: what tritonclient's binary tensors look like on the wire, and
every malformed body refused with a 400 that says what was expected."""

from __future__ import annotations

import gzip
import struct

import orjson
import pytest

from server.api.errors import ApiError
from server.api.kserve_codec import (
    OutputTensor,
    decode_bytes_elements,
    decompress,
    encode_bytes_elements,
    parse_infer_request,
    render_infer_response,
)


def binary_request(texts: list[str], **header) -> tuple[bytes, str]:
    blob = encode_bytes_elements(texts)
    tensor = {"name": "text", "datatype": "BYTES", "shape": [len(texts)], "parameters": {"binary_data_size": len(blob)}}
    json_part = orjson.dumps({"inputs": [tensor], **header})
    return json_part + blob, str(len(json_part))


def test_binary_and_nested_json_inputs_parse_to_the_same_texts():
    texts = ["plain", "ünïcode ✓", ""]
    body, length = binary_request(texts, id="r1", parameters={"truncate": False})
    parsed = parse_infer_request(body, length)
    assert parsed.texts == {"text": texts} and parsed.id == "r1" and parsed.parameters == {"truncate": False}
    nested = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [3, 1], "data": [["plain"], ["ünïcode ✓"], [""]]}]}
    assert parse_infer_request(orjson.dumps(nested), None).texts == {"text": texts}
    assert decode_bytes_elements(memoryview(encode_bytes_elements(texts)), "text") == texts


def test_binary_outputs_follow_the_json_header():
    outputs = [(OutputTensor("scores", "FP32", [1, 2], [0.25, 0.75]), True), (OutputTensor("label", "BYTES", [1], ["b"]), False)]
    body, length = render_infer_response({"model_name": "t"}, outputs)
    header = orjson.loads(body[:length])
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 8} and header["outputs"][1]["data"] == ["b"]
    assert struct.unpack("<2f", body[length:]) == (0.25, 0.75)
    assert render_infer_response({}, [(outputs[1][0], False)])[1] is None  # all JSON: no header length


@pytest.mark.parametrize(
    "body, length, message",
    [
        (b"[1]", None, "expected a JSON object"),
        (b'{"inputs": []}', None, "expected a non-empty list of tensors"),
        (b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [3]}]}', None, "expected strings, got 3"),
        (b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1], "data": ["a"]}]}', None, "shape of non-negative"),
        (b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"]}]}xx', "80",
         "expected 0 bytes after the JSON header, got 2"),
        (b"{}", "99", "expected the JSON header's size, at most 2"),
        (b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"]}], "outputs": [{"name": "label", '
         b'"parameters": {"classification": 2}}]}', None, "classification extension is not supported"),
    ],
)
def test_malformed_requests_are_400_with_what_was_expected(body, length, message):
    with pytest.raises(ApiError) as refused:
        parse_infer_request(body, length)
    assert refused.value.status == 400 and message in refused.value.message


def test_truncated_binary_elements_and_bad_utf8_are_refused():
    with pytest.raises(ApiError, match="element 0 declares 9 bytes, 2 remain"):
        decode_bytes_elements(memoryview(struct.pack("<I", 9) + b"ab"), "text")
    with pytest.raises(ApiError, match="expected UTF-8 text"):
        decode_bytes_elements(memoryview(struct.pack("<I", 1) + b"\xff"), "text")


def test_compressed_bodies_are_inflated_within_the_size_bound():
    assert decompress(gzip.compress(b"x" * 100), "gzip", 100) == b"x" * 100
    with pytest.raises(ApiError) as refused:
        decompress(gzip.compress(b"x" * 101), "gzip", 100)
    assert refused.value.status == 413
    with pytest.raises(ApiError) as refused:
        decompress(b"x", "br", 100)
    assert refused.value.status == 415
