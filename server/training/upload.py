"""The upload step of `prefix-server train --upload`: `PUT /v1/tasks/{task}` (SPEC section 2) through
the package's client (server/client.py), its refusals turned into one UploadError for the command."""

from __future__ import annotations

import re
import urllib.parse

from server.client import Client, PrefixServerError, Version

TASK_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


class UploadError(RuntimeError):
    """The upload did not go through; the message says what the server (or the network) said."""


def check_task_name(task: str) -> str:
    if not TASK_NAME.fullmatch(task or ""):
        raise ValueError(f"--task: expected a name matching [a-z0-9][a-z0-9_-]{{0,62}}, got {task!r}")
    return task


def upload_artifact(base_url: str, task: str, data: bytes, api_key: str | None = None, timeout: float = 120) -> Version:
    """PUTs `data` as the new active version of `task`; returns the version the server stored."""
    check_task_name(task)
    parsed = urllib.parse.urlsplit(base_url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"--upload: expected an http(s) URL such as http://127.0.0.1:8000, got {base_url!r}")
    url = f"{base_url.rstrip('/')}/v1/tasks/{task}"
    try:
        with Client(base_url, api_key, timeout=timeout) as client:
            return client.upload(task, data)
    except PrefixServerError as exc:
        if exc.status is None:
            raise UploadError(f"PUT {url}: {exc.message}") from None
        raise UploadError(f"PUT {url}: HTTP {exc.status}: {exc.code}: {exc.message}") from None
