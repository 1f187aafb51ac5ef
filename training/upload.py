"""The upload step of `prefix-server train --upload`: `PUT /v1/tasks/{task}` (SPEC section 2) through
the package's client (server/client.py), its refusals turned into one UploadError for the command.

Training takes minutes, so what the upload at its end needs is checked before it starts
(`check_upload_target`): the task name, a server that answers, a key it takes, and the backbone."""

from __future__ import annotations

import urllib.parse

from server.client import Client, PrefixServerError, Version
from server.registry.names import InvalidName, validate_name
from server.settings import API_KEY_VARIABLE


class UploadError(RuntimeError):
    """The upload did not go through; the message says what the server (or the network) said."""


def check_task_name(task: str) -> str:
    try:
        return validate_name("task", task)
    except InvalidName as exc:
        raise ValueError(f"--task: {exc}") from None


def check_upload_target(base_url: str, task: str, api_key: str | None, backbone_fingerprint: str | None,
                        timeout: float = 30) -> None:
    """Raises ValueError or UploadError unless an upload of `task` to `base_url` with `api_key` can
    succeed: GET /v1/info (the server answers, takes the key, runs the backbone the prefix is trained
    on) and GET /v1/tasks/{task} (found or not, the key may add a version; 422 for a name it refuses)."""
    check_task_name(task)
    _check_url(base_url)
    try:
        with Client(base_url, api_key, timeout=timeout) as client:
            served = client.info().backbone.get("fingerprint")
            try:
                client.get_task(task)
            except PrefixServerError as exc:
                if exc.status != 404:  # not found: the upload creates the task
                    raise
    except PrefixServerError as exc:
        raise UploadError(f"{base_url}: {_described(exc)}; checked before training, nothing was trained") from None
    if backbone_fingerprint is not None and served != backbone_fingerprint:
        raise UploadError(
            f"{base_url}: expected a server on the backbone to train on ({backbone_fingerprint}), got one on {served}: "
            "it would refuse the prefix; train with its backbone (--backbone) or upload elsewhere"
        )


def upload_artifact(base_url: str, task: str, data: bytes, api_key: str | None = None, timeout: float = 120) -> Version:
    """PUTs `data` as the new active version of `task`; returns the version the server stored."""
    check_task_name(task)
    _check_url(base_url)
    url = f"{base_url.rstrip('/')}/v1/tasks/{task}"
    try:
        with Client(base_url, api_key, timeout=timeout) as client:
            return client.upload(task, data)
    except PrefixServerError as exc:
        raise UploadError(f"PUT {url}: {_described(exc)}") from None


def _check_url(base_url: str) -> None:
    parsed = urllib.parse.urlsplit(base_url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"--upload: expected an http(s) URL such as http://127.0.0.1:8000, got {base_url!r}")


def _described(exc: PrefixServerError) -> str:
    if exc.status is None:
        return exc.message
    hint = f" (the key: --api-key or ${API_KEY_VARIABLE})" if exc.status == 401 else ""
    return f"HTTP {exc.status}: {exc.code}: {exc.message}{hint}"
