"""How `serve` stops: a uvicorn.Server that drains on the first SIGTERM or SIGINT, and that stops
itself, recording why, when the start-up fails.

The drain, with `delay` = SHUTDOWN_DELAY_S and `grace` = SHUTDOWN_GRACE_S:
- at the signal, /readyz answers 503 (a load balancer stops sending) and the batcher is told its
  deadline, signal + delay + grace: from then on it finishes requests whole, started ones first, and
  refuses at once (503 + Retry-After) a request that would not finish by the deadline;
- after `delay` the listener closes and idle connections are closed; requests in flight continue;
- at the deadline the batcher answers 503 to whatever it still holds; ANSWER_SLACK_S later uvicorn
  cancels what is left (nothing of the classify path by then), then the engine stops and the process
  exits 0. A second signal skips what is left of the delay.
"""

from __future__ import annotations

import asyncio
import logging
import threading

import uvicorn

from server.api.state import Services

log = logging.getLogger(__name__)

# Between the drain deadline, when the batcher answers 503 to what it still holds, and uvicorn's
# cancelling of unfinished handlers: time for those answers to be written.
ANSWER_SLACK_S = 1.0


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, services: Services, delay_s: float = 0.0, grace_s: float = 8.0) -> None:
        config.timeout_graceful_shutdown = grace_s + ANSWER_SLACK_S  # counted from the listener's close
        super().__init__(config)
        self.services, self.delay_s, self.grace_s = services, delay_s, grace_s
        self.failure: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        services.on_startup_failure = self.fail

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig, frame) -> None:
        if self.services.draining or not self.delay_s:  # a second signal does not wait again
            self._begin_drain()
            super().handle_exit(sig, frame)
            return
        self._begin_drain()
        log.info("signal %s: unready; closing the listener in %.1f s, requests in flight have %.1f s more",
                 sig, self.delay_s, self.grace_s)
        # A timer, not the event loop: this runs in a signal handler. Setting should_exit is all
        # uvicorn's main loop needs, and it polls it every 0.1 s.
        timer = threading.Timer(self.delay_s, super().handle_exit, (sig, frame))
        timer.daemon = True
        timer.start()

    def _begin_drain(self) -> None:
        if self.services.draining:
            return
        self.services.draining = True  # /readyz answers 503 from now on
        if self._loop is not None:  # a signal handler may interrupt any callback: hand over to the loop
            self._loop.call_soon_threadsafe(self.services.begin_drain, self.delay_s + self.grace_s)

    def fail(self, reason: str) -> None:
        """Called on the event loop by the start-up task; uvicorn's main loop sees should_exit within 0.1 s."""
        self.failure = reason
        self.should_exit = True
