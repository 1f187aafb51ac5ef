"""ASGI middleware: a request id on every request and response (and in every log line), and body
size limits enforced before a body is read whole (Content-Length first, then while streaming)."""

from __future__ import annotations

import logging
import re
import time
import uuid

from server.api.errors import PayloadTooLarge
from server.logs import request_id_var

log = logging.getLogger("server.access")
_UPLOAD_PATH = re.compile(r"^/v1/tasks/[^/]+$")
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RequestIdMiddleware:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _SAFE_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        started, status = time.perf_counter(), 500

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed_ms = (time.perf_counter() - started) * 1000
            log.info("%s %s %d %.1fms", scope["method"], scope["path"], status, elapsed_ms)
            request_id_var.reset(token)


class BodyLimitMiddleware:
    """Uploads (PUT /v1/tasks/{task}) may be up to `upload_limit` bytes, every other body `request_limit`."""

    def __init__(self, app, upload_limit: int, request_limit: int):
        self.app, self.upload_limit, self.request_limit = app, upload_limit, request_limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        is_upload = scope["method"] == "PUT" and _UPLOAD_PATH.match(scope["path"])
        limit = self.upload_limit if is_upload else self.request_limit
        what = "artifact upload" if is_upload else "request body"
        declared = dict(scope["headers"]).get(b"content-length")
        too_large = declared is not None and declared.isdigit() and int(declared) > limit
        received = 0

        # Raised from inside the route, on its first read: the route's error handling gives the 413 the
        # body its protocol uses (server/api/errors.py protocol_route). Nothing of the body is read.
        async def counting_receive():
            nonlocal received
            if too_large:
                raise PayloadTooLarge(limit, what, int(declared))
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(limit, what)
            return message

        await self.app(scope, counting_receive, send)
