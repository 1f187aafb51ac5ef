"""The client side of `PUT /v1/tasks/{task}` (SPEC section 2): sends an artifact as the multipart
field `file`, with `Authorization: Bearer <key>` when a key is given. Standard library only."""

from __future__ import annotations

import json
import re
import secrets
import urllib.error
import urllib.parse
import urllib.request

TASK_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


class UploadError(RuntimeError):
    """The upload did not go through; the message says what the server (or the network) said."""


def check_task_name(task: str) -> str:
    if not TASK_NAME.fullmatch(task or ""):
        raise ValueError(f"--task: expected a name matching [a-z0-9][a-z0-9_-]{{0,62}}, got {task!r}")
    return task


def upload_artifact(base_url: str, task: str, data: bytes, api_key: str | None = None, timeout: float = 120) -> dict:
    """PUTs `data` as the new active version of `task`; returns the server's JSON answer."""
    check_task_name(task)
    parsed = urllib.parse.urlsplit(base_url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"--upload: expected an http(s) URL such as http://127.0.0.1:8000, got {base_url!r}")
    boundary = "prefix-server-" + secrets.token_hex(16)
    body = _multipart(boundary, f"{task}.safetensors", data)
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}", "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    url = f"{base_url.rstrip('/')}/v1/tasks/{task}"
    request = urllib.request.Request(url, data=body, headers=headers, method="PUT")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        raise UploadError(f"PUT {url}: HTTP {exc.code}: {_error_message(exc)}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise UploadError(f"PUT {url}: could not reach the server ({getattr(exc, 'reason', exc)})") from None


def _multipart(boundary: str, filename: str, data: bytes) -> bytes:
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode()


def _error_message(exc: urllib.error.HTTPError) -> str:
    raw = exc.read()
    try:
        error = json.loads(raw)["error"]
        return f"{error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return raw.decode("utf-8", "replace")[:500] or exc.reason
