"""Admission by expected wait: a request that would wait longer than ``serving.max_queue_wait_s`` for a slot in the
running batch is refused at once, with 429 and ``Retry-After``, rather than queued behind everyone else.

The wait is estimated from what the engine has measured: requests ahead of this one beyond the free slots, over the
slots, times the mean time a request ran in the batch, from joining it to its end (a moving average of the last
ones; not from its arrival, or every wait would count twice and the estimate grow with the queue). Before any
request has finished there is no estimate, and nothing is refused. The ``openai`` client, among others, retries a
429 after the ``Retry-After`` it names, with its own backoff.
"""

from __future__ import annotations

import math
import re

from handlers.errors import Overloaded

OVERLOADED = "the model is overloaded"
SMOOTHING = 0.2  # weight of the latest request in the moving average of request durations


class Admission:
    def __init__(self, slots: int, max_wait_s: float):
        """``max_wait_s``: 0 admits everything (no bound)."""
        self.slots, self.max_wait_s = slots, max_wait_s
        self.mean_s: float | None = None

    def finished(self, seconds: float) -> None:
        """A request ran to its end (not cancelled, not failed) in ``seconds`` from joining the batch."""
        self.mean_s = seconds if self.mean_s is None else (1 - SMOOTHING) * self.mean_s + SMOOTHING * seconds

    def expected_wait_s(self, ahead: int) -> float:
        """The wait for a slot of a request with ``ahead`` requests before it beyond the free slots."""
        return 0.0 if ahead <= 0 or self.mean_s is None else ahead / self.slots * self.mean_s

    def check(self, running: int, waiting: int, count: int = 1) -> None:
        """Refuse ``count`` new requests (one client request's choices) if the last would wait too long."""
        if not self.max_wait_s:
            return
        wait = self.expected_wait_s(waiting + count - (self.slots - running))
        if wait > self.max_wait_s:
            retry = max(1, math.ceil(wait - self.max_wait_s))
            raise Overloaded(f"{OVERLOADED}: a new request would wait ~{wait:.0f} s for a slot "
                             f"(serving.max_queue_wait_s is {self.max_wait_s:g}); retry after {retry} s",
                             retry_after_s=retry)  # fmt: skip


def overloaded_from(message: str) -> Overloaded | None:
    """The refusal again, from its message as Triton relays it (an UNAVAILABLE error), or None."""
    found = re.search(r"retry after (\d+) s", message) if OVERLOADED in message else None
    return Overloaded(message, int(found.group(1))) if found else None
