"""A Python client of prefix-server's HTTP API (SPEC section 2), over httpx: `Client` (sync) and
`AsyncClient` share one core, `_Api`, that builds every request and reads every answer into a typed
result; the two differ only in how a request is sent and how a retry waits.

429 (overloaded) and 503 (not ready, engine restarting) are retried, waiting what `Retry-After` says
(else an exponential backoff), within `RetryPolicy`'s attempts and total time; nothing is stored by
a refused request, so uploads are retried too. Every other failure raises `PrefixServerError` with
the status, code and message of the server's `{"error": {"code", "message"}}`.

    with Client("http://127.0.0.1:8000", api_key="psk_...") as client:
        answer = client.classify("sentiment", ["a triumph", ("is it good?", "it is")])
        answer.results[0].label

`AsyncClient` has the same methods, awaited.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from server import __version__

RETRIED_STATUSES = (429, 503)


class PrefixServerError(Exception):
    """The server refused a call (`status`, `code`, `message` from its error body), or could not be
    reached (`status` None, `code` 'unreachable')."""

    def __init__(self, status: int | None, code: str, message: str):
        super().__init__(f"HTTP {status}: {code}: {message}" if status is not None else f"{code}: {message}")
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 4  # the first try included
    budget_s: float = 30.0  # total time across attempts; a wait that would pass it is not made
    backoff_s: float = 0.5  # without Retry-After: 0.5, 1, 2, ... seconds


@dataclass(frozen=True)
class Result:
    """One input's answer: `scores` for all labels; `label`/`score` (single-label) or `labels` (multi-label)."""

    scores: dict[str, float]
    label: str | None = None
    score: float | None = None
    labels: list[str] | None = None


@dataclass(frozen=True)
class Classification:
    task: str
    version: int  # the version that answered
    results: list[Result]


@dataclass(frozen=True)
class Version:
    task: str
    version: int
    sha256: str
    prefix_len: int | None = None
    problem_type: str | None = None
    labels: tuple[str, ...] = ()
    size_bytes: int | None = None
    created_at: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Route:
    version: int | None = None  # pinned
    weights: dict[int, float] = field(default_factory=dict)  # or split


@dataclass(frozen=True)
class Task:
    task: str
    route: Route
    latest_version: int
    active_versions: list[int]
    versions: list[Version]  # empty in list_tasks()


@dataclass(frozen=True)
class TenantKey:
    name: str
    api_key: str  # shown once
    limits: dict[str, int]


@dataclass(frozen=True)
class ServerInfo:
    backbone: dict[str, Any]
    limits: dict[str, Any]
    multi_tenant: bool


@dataclass(frozen=True)
class _Call:
    method: str
    path: str
    read: Callable[[Any], Any]  # the answer's JSON -> the typed result
    json: Any = None
    files: dict | None = None


class _Api:
    """Every call as a request; `_send` (sync or async) runs it."""

    def classify(
        self, task: str, inputs: str | Sequence[str | tuple[str, str]], *, version: int | None = None,
        raw_scores: bool = False, truncate: bool = True,
    ) -> Classification:
        items = [inputs] if isinstance(inputs, str) else list(inputs)
        body = {"task": task, "inputs": [_input_json(item) for item in items], "truncate": truncate}
        if version is not None:
            body["version"] = version
        if raw_scores:
            body["raw_scores"] = True
        return self._send(_Call("POST", "/v1/classify", _classification, json=body))

    def upload(self, task: str, artifact: str | Path | bytes, *, labels: Sequence[str] | None = None,
               problem_type: str | None = None) -> Version:
        """A new version of `task` (made active) from a .safetensors artifact or a PEFT folder .zip."""
        if isinstance(artifact, (bytes, bytearray)):
            name, data = f"{task}.safetensors", bytes(artifact)
        else:
            name, data = Path(artifact).name, Path(artifact).read_bytes()
        form = {"labels": (None, ",".join(labels))} if labels else {}
        if problem_type:
            form["problem_type"] = (None, problem_type)
        files = {"file": (name, data, "application/octet-stream"), **form}
        return self._send(_Call("PUT", f"/v1/tasks/{task}", _version, files=files))

    def list_tasks(self) -> list[Task]:
        return self._send(_Call("GET", "/v1/tasks", lambda body: [_task(t) for t in body["tasks"]]))

    def get_task(self, task: str) -> Task:
        return self._send(_Call("GET", f"/v1/tasks/{task}", _task))

    def set_route(self, task: str, *, version: int | None = None, weights: dict[int, float] | None = None) -> Route:
        """Pins one version, or splits traffic by weight (versions -> fractions summing to 1)."""
        if (version is None) == (weights is None):
            raise ValueError(
                f"set_route: expected exactly one of version or weights, got version={version!r}, weights={weights!r}"
            )
        body = {"version": version} if version is not None else {"weights": {str(v): w for v, w in weights.items()}}
        return self._send(_Call("PUT", f"/v1/tasks/{task}/route", lambda answer: _route(answer["route"]), json=body))

    def delete_task(self, task: str) -> None:
        return self._send(_Call("DELETE", f"/v1/tasks/{task}", lambda _: None))

    def create_tenant(self, name: str, limits: dict[str, int] | None = None) -> TenantKey:
        """(admin) A new tenant and its API key, which the server shows only this once."""
        body = {"name": name} if limits is None else {"name": name, "limits": limits}
        return self._send(_Call("POST", "/v1/admin/tenants", _tenant_key, json=body))

    def info(self) -> ServerInfo:
        return self._send(_Call("GET", "/v1/info", _server_info))

    def _send(self, call: _Call):
        raise NotImplementedError


class Client(_Api):
    def __init__(self, base_url: str, api_key: str | None = None, *, timeout: float = 30.0,
                 retry: RetryPolicy = RetryPolicy(), transport: httpx.BaseTransport | None = None):
        self.retry = retry
        self._http = httpx.Client(
            base_url=_base_url(base_url), headers=_headers(api_key), timeout=timeout, transport=transport
        )

    def _send(self, call: _Call):
        started, attempt = time.monotonic(), 1
        while True:
            try:
                response = self._http.request(call.method, call.path, json=call.json, files=call.files)
            except httpx.TransportError as exc:
                raise _unreachable(exc) from None
            wait = retry_wait(response, attempt, time.monotonic() - started, self.retry)
            if wait is None:
                return _answer(call, response)
            time.sleep(wait)
            attempt += 1

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncClient(_Api):
    def __init__(self, base_url: str, api_key: str | None = None, *, timeout: float = 30.0,
                 retry: RetryPolicy = RetryPolicy(), transport: httpx.AsyncBaseTransport | None = None):
        self.retry = retry
        self._http = httpx.AsyncClient(
            base_url=_base_url(base_url), headers=_headers(api_key), timeout=timeout, transport=transport
        )

    async def _send(self, call: _Call):
        started, attempt = time.monotonic(), 1
        while True:
            try:
                response = await self._http.request(call.method, call.path, json=call.json, files=call.files)
            except httpx.TransportError as exc:
                raise _unreachable(exc) from None
            wait = retry_wait(response, attempt, time.monotonic() - started, self.retry)
            if wait is None:
                return _answer(call, response)
            await asyncio.sleep(wait)
            attempt += 1

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()


def retry_wait(response: httpx.Response, attempt: int, elapsed_s: float, policy: RetryPolicy) -> float | None:
    """Seconds to wait before trying again, or None: answer with this response."""
    if response.status_code not in RETRIED_STATUSES or attempt >= policy.max_attempts:
        return None
    wait = _retry_after(response.headers.get("retry-after"))
    if wait is None:
        wait = policy.backoff_s * 2 ** (attempt - 1)
    return wait if elapsed_s + wait <= policy.budget_s else None


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:  # the other form the header may take: an HTTP date
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _answer(call: _Call, response: httpx.Response):
    if response.is_success:
        return call.read(response.json() if response.content else None)
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        code, message = f"http_{response.status_code}", response.text[:500] or response.reason_phrase
    raise PrefixServerError(response.status_code, code, message)


def _unreachable(exc: httpx.TransportError) -> PrefixServerError:
    return PrefixServerError(None, "unreachable", f"could not reach the server ({type(exc).__name__}: {exc})")


def _base_url(base_url: str) -> str:
    url = httpx.URL(base_url)
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"base_url: expected an http(s) URL such as http://127.0.0.1:8000, got {base_url!r}")
    return base_url.rstrip("/")


def _headers(api_key: str | None) -> dict[str, str]:
    headers = {"User-Agent": f"prefix-server-client/{__version__}", "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def _input_json(item: str | tuple[str, str]):
    if isinstance(item, str):
        return item
    text, text_pair = item
    return {"text": text, "text_pair": text_pair}


def _classification(body: dict) -> Classification:
    results = [Result(r["scores"], r.get("label"), r.get("score"), r.get("labels")) for r in body["results"]]
    return Classification(body["task"], body["version"], results)


def _version(body: dict) -> Version:
    known = {k: body[k] for k in ("prefix_len", "problem_type", "size_bytes", "created_at") if k in body}
    labels, metadata = tuple(body.get("labels", ())), dict(body.get("metadata") or {})
    return Version(body["task"], body["version"], body["sha256"], labels=labels, metadata=metadata, **known)


def _route(body: dict) -> Route:
    return Route(body.get("version"), {int(v): w for v, w in body.get("weights", {}).items()})


def _task(body: dict) -> Task:
    versions = [_version(v) for v in body.get("versions", [])]
    return Task(body["task"], _route(body["route"]), body["latest_version"], body["active_versions"], versions)


def _tenant_key(body: dict) -> TenantKey:
    return TenantKey(body["name"], body["api_key"], body.get("limits", {}))


def _server_info(body: dict) -> ServerInfo:
    return ServerInfo(body["backbone"], body["limits"], body.get("multi_tenant", False))
