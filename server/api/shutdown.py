"""How `serve` stops: a uvicorn.Server that turns unready on the first SIGTERM or SIGINT, keeps
accepting for `shutdown_delay_s` (load balancers see /readyz 503 and stop sending), then lets uvicorn's
graceful shutdown finish the requests in flight (bounded by `shutdown_grace_s`); and that stops itself,
recording why, when the start-up fails."""

from __future__ import annotations

import logging
import threading

import uvicorn

from server.api.state import Services

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, services: Services, delay_s: float = 0.0) -> None:
        super().__init__(config)
        self.services, self.delay_s = services, delay_s
        self.failure: str | None = None
        services.on_startup_failure = self.fail

    def handle_exit(self, sig, frame) -> None:
        if self.services.draining or not self.delay_s:  # a second signal does not wait again
            self.services.draining = True
            super().handle_exit(sig, frame)
            return
        self.services.draining = True  # /readyz answers 503 from now on
        log.info("signal %s: unready; closing the listener in %.1f s", sig, self.delay_s)
        # A timer, not the event loop: this runs in a signal handler. Setting should_exit is all
        # uvicorn's main loop needs, and it polls it every 0.1 s.
        timer = threading.Timer(self.delay_s, super().handle_exit, (sig, frame))
        timer.daemon = True
        timer.start()

    def fail(self, reason: str) -> None:
        """Called on the event loop by the start-up task; uvicorn's main loop sees should_exit within 0.1 s."""
        self.failure = reason
        self.should_exit = True
