"""The body codec of KServe v2 / Open Inference Protocol REST inference: JSON tensors and the binary
tensor data extension (what `tritonclient.http` sends by default).

Owns turning an infer request body into its BYTES inputs as Python strings, and outputs into the
answer body: JSON `data`, or raw bytes after the JSON header (`Inference-Header-Content-Length`
gives its length; BYTES elements are a 4-byte little-endian length and the bytes, FP32 raw
little-endian floats, INT64 raw little-endian integers). Knows nothing of tasks or what the scores mean.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import orjson

from server.api.errors import ApiError, invalid_json

HEADER_LENGTH = "Inference-Header-Content-Length"


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    texts: dict[str, list[str]]  # input name -> its elements, flattened in row-major order
    parameters: dict
    outputs: dict[str, bool | None] | None  # requested output -> its binary_data parameter; None: all


@dataclass(frozen=True)
class OutputTensor:
    name: str
    datatype: str  # "FP32", "INT64" or "BYTES"
    shape: list[int]
    data: list  # flattened: floats for FP32, integers for INT64, strings for BYTES


def parse_infer_request(body: bytes, header_length: str | None) -> InferRequest:
    json_size = _json_size(header_length, len(body))
    header = _json_object(body[:json_size])
    binary = memoryview(body)[json_size:]
    if not isinstance(header.get("inputs"), list) or not header["inputs"]:
        raise ApiError(400, f"inputs: expected a non-empty list of tensors, got {_short(header.get('inputs'))}")
    texts, offset = {}, 0
    for tensor in header["inputs"]:
        name, elements, offset = _input_elements(tensor, binary, offset)
        if name in texts:
            raise ApiError(400, f"inputs: expected each input once, got {name!r} twice")
        texts[name] = elements
    if offset != len(binary):
        raise ApiError(400, f"binary data: expected {offset} bytes after the JSON header, got {len(binary)}")
    parameters = header.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ApiError(400, f"parameters: expected an object, got {_short(parameters)}")
    request_id = header.get("id")
    return InferRequest(None if request_id is None else str(request_id), texts, parameters, _requested_outputs(header))


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body as sent before `Content-Encoding` (tritonclient's request_compression_algorithm), at
    most `limit` bytes once inflated: the size bound holds for what is decoded, not only what came."""
    if not encoding or encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise ApiError(415, f"Content-Encoding: expected gzip, deflate or none, got {encoding!r}")
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ApiError(400, f"Content-Encoding {encoding}: expected a {encoding} stream, got a broken one ({exc})") from None
    if len(data) > limit:
        raise ApiError(413, f"request body: expected at most {limit} bytes once inflated, got more")
    return data


def render_infer_response(header: dict, outputs: list[tuple[OutputTensor, bool]]) -> tuple[bytes, int | None]:
    """The answer body for (tensor, binary?) pairs, and the JSON header's length if any is binary."""
    described, blobs = [], []
    for tensor, binary in outputs:
        entry = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
        if binary:
            blob = _BINARY[tensor.datatype](tensor.data)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = tensor.data
        described.append(entry)
    json_part = orjson.dumps({**header, "outputs": described})
    if not blobs:
        return json_part, None
    return json_part + b"".join(blobs), len(json_part)


def encode_bytes_elements(values: list[str]) -> bytes:
    parts = []
    for value in values:
        raw = value.encode()
        parts.append(struct.pack("<I", len(raw)) + raw)
    return b"".join(parts)


def decode_bytes_elements(raw: memoryview, name: str) -> list[str]:
    elements, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise ApiError(400, f"input {name!r}: expected a 4-byte length at byte {offset}, got {len(raw) - offset} bytes")
        (length,) = struct.unpack_from("<I", raw, offset)
        start, offset = offset + 4, offset + 4 + length
        if offset > len(raw):
            left = len(raw) - start
            raise ApiError(400, f"input {name!r}: element {len(elements)} declares {length} bytes, {left} remain")
        elements.append(_utf8(raw[start:offset], name, len(elements)))
    return elements


def _json_size(header_length: str | None, body_size: int) -> int:
    if header_length is None:
        return body_size
    if not header_length.isdigit() or int(header_length) > body_size:
        raise ApiError(400, f"{HEADER_LENGTH}: expected the JSON header's size, at most {body_size}, got {header_length!r}")
    return int(header_length)


def _json_object(raw: bytes) -> dict:
    try:
        header = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, invalid_json("a JSON inference request", str(exc))) from None
    if not isinstance(header, dict):
        raise ApiError(400, f"expected a JSON object as the inference request, got {_short(header)}")
    return header


def _input_elements(tensor, binary: memoryview, offset: int) -> tuple[str, list[str], int]:
    if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
        raise ApiError(400, f"inputs: expected tensors with a name, datatype, shape and data, got {_short(tensor)}")
    name = tensor["name"]
    if tensor.get("datatype") != "BYTES":
        raise ApiError(400, f"input {name!r}: expected datatype BYTES, got {_short(tensor.get('datatype'))}")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ApiError(400, f"input {name!r}: expected a shape of non-negative integers, got {_short(shape)}")
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            left = len(binary) - offset
            raise ApiError(400, f"input {name!r}: binary_data_size {size!r} does not fit the {left} bytes left")
        elements, offset = decode_bytes_elements(binary[offset : offset + size], name), offset + size
    else:
        elements = _json_elements(tensor.get("data"), name)
    count = 1
    for dim in shape:
        count *= dim
    if count != len(elements):
        raise ApiError(400, f"input {name!r}: shape {shape} holds {count} elements, got {len(elements)}")
    return name, elements, offset


def _json_elements(data, name: str) -> list[str]:
    if not isinstance(data, list):
        raise ApiError(400, f"input {name!r}: expected 'data' (a list of strings) or binary data, got {_short(data)}")
    flat = []
    stack = [iter(data)]
    while stack:  # nested lists are row-major, as the protocol allows
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            if not isinstance(value, str):
                raise ApiError(400, f"input {name!r}: expected strings, got {_short(value)}")
            flat.append(value)
        else:
            stack.pop()
    return flat


def _requested_outputs(header: dict) -> dict[str, bool | None] | None:
    outputs = header.get("outputs")
    if outputs is None:
        return None
    if not isinstance(outputs, list):
        raise ApiError(400, f"outputs: expected a list of {{'name', 'parameters'}}, got {_short(outputs)}")
    requested = {}
    for output in outputs:
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            raise ApiError(400, f"outputs: expected objects with a name, got {_short(output)}")
        parameters = output.get("parameters") or {}
        if parameters.get("classification"):
            raise ApiError(400, f"output {output['name']!r}: the classification extension is not supported; "
                           "expected the 'label' output for the top label")
        binary = parameters.get("binary_data")
        requested[output["name"]] = None if binary is None else bool(binary)
    return requested


def _encode_fp32(values: list[float]) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


def _encode_int64(values: list[int]) -> bytes:
    return struct.pack(f"<{len(values)}q", *values)


_BINARY = {"FP32": _encode_fp32, "INT64": _encode_int64, "BYTES": encode_bytes_elements}


def _utf8(raw: memoryview, name: str, index: int) -> str:
    try:
        return str(raw, "utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"input {name!r}: element {index}: expected UTF-8 text, got {exc.reason}") from None


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
