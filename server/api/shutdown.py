"""How `serve` stops: a uvicorn.Server that turns unready on the first SIGTERM or SIGINT (then
uvicorn's graceful shutdown lets requests in flight finish, bounded by its timeout), and that stops
itself, recording why, when the start-up fails."""

from __future__ import annotations

import uvicorn

from server.api.state import Services


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, services: Services) -> None:
        super().__init__(config)
        self.services = services
        self.failure: str | None = None
        services.on_startup_failure = self.fail

    def handle_exit(self, sig, frame) -> None:
        self.services.draining = True  # /readyz answers 503 from now on
        super().handle_exit(sig, frame)

    def fail(self, reason: str) -> None:
        """Called on the event loop by the start-up task; uvicorn's main loop sees should_exit within 0.1 s."""
        self.failure = reason
        self.should_exit = True
