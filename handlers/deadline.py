"""Per-request deadlines: a request whose client has stopped waiting is answered at once and never computed.

The client says when it stops waiting, as Unix time in milliseconds: on TorchServe the header
``X-Request-Deadline``, on Triton the request parameter ``deadline``. The time is absolute because the wait in the
server's queue must count, and neither server tells the model when a request arrived. So the client's clock and
the server's must agree, as on one host or under NTP. Each request of a batch is checked on its own, before
preprocessing: one whose deadline has passed, or is nearer than the time a batch has been taking (its answer would
come after its client stopped waiting), gets 504 (Triton: UNAVAILABLE), and the rest of the batch runs. A full batch
means the server's queue holds more: its front end is busy taking requests in, and an answer takes longer to get out
(up to ~20 ms on Triton under overload, docs/overload.md), so a full batch also keeps ``reply_margin_ms`` free.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from handlers.errors import InvalidInput, ServingError

DEADLINE_HEADER = "X-Request-Deadline"
DEADLINE_PARAMETER = "deadline"


class DeadlineExceeded(ServingError):
    """The client's deadline passed before the model could start on the request."""

    http_status = 504
    triton_code = "UNAVAILABLE"


def refusal(deadline: Any, now_ms: float, batch_ms: float = 0.0, margin_ms: float = 0.0) -> ServingError | None:
    """Why a request with this deadline (None: it has none) must not run, when a batch takes ``batch_ms`` and its
    answer ``margin_ms`` more to reach the client; or None."""
    if deadline is None or deadline == "":
        return None
    try:
        value = float(deadline)
    except (TypeError, ValueError):
        return InvalidInput(f"{DEADLINE_HEADER} (Triton: the parameter '{DEADLINE_PARAMETER}') must be Unix time in "
                            f"milliseconds, not {str(deadline)[:40]!r}")  # fmt: skip
    if value <= now_ms:
        return DeadlineExceeded(f"the request's deadline passed {now_ms - value:.0f} ms before the model could start "
                                "it; it was not computed")  # fmt: skip
    if value < now_ms + batch_ms + margin_ms:
        reply = f" and, with the server's queue full, its answer up to {margin_ms:.0f} ms more" if margin_ms else ""
        return DeadlineExceeded(f"the request's deadline is {value - now_ms:.0f} ms away, a batch takes "
                                f"~{batch_ms:.0f} ms{reply}: it would be answered late, so it was not "
                                "computed")  # fmt: skip
    return None


class DeadlineGate:
    """One model instance's check of its batches' deadlines, with a moving mean of how long its batches take.
    A batch of ``max_batch_size`` requests (the server's queue holds more) also keeps ``reply_margin_ms`` free."""

    SMOOTHING = 0.2  # the latest batch's weight in the mean: a slow spell shows within a few batches

    def __init__(self, max_batch_size: int = 0, reply_margin_ms: float = 0.0):
        self.batch_ms = 0.0  # 0 until a batch is timed: until then only a deadline that has passed is refused
        self.max_batch_size, self.reply_margin_ms = max_batch_size, reply_margin_ms

    @classmethod
    def for_serving(cls, serving: Any) -> DeadlineGate:
        """The gate of a model served with these settings (``handlers.settings.ServingSettings``)."""
        return cls(serving.max_batch_size, serving.reply_margin_ms)

    def observe(self, batch_ms: float) -> None:
        self.batch_ms = batch_ms if not self.batch_ms else self.batch_ms + self.SMOOTHING * (batch_ms - self.batch_ms)

    def run(self, deadlines: list[Any], run: Callable[[list[int]], list], refuse: Callable[[ServingError], Any],
            timed: bool = True) -> tuple[list, list[ServingError | None]]:  # fmt: skip
        """``run(indices)`` for the requests that can be answered in time, ``refuse(error)`` for the others, in the
        requests' order; and each request's refusal (None: it ran). ``run`` is not called when none is left; its
        time goes into the mean unless ``timed`` is False (a batch unlike the others, such as an explanation)."""
        now_ms = time.time() * 1e3
        full = 0 < self.max_batch_size <= len(deadlines)
        margin = self.reply_margin_ms if full else 0.0
        refusals = [refusal(deadline, now_ms, self.batch_ms, margin) for deadline in deadlines]
        keep = [i for i, refused in enumerate(refusals) if refused is None]
        started = time.perf_counter()
        answers = iter(run(keep) if keep else [])
        if keep and timed:
            self.observe((time.perf_counter() - started) * 1e3)
        elif not keep and any(isinstance(r, DeadlineExceeded) and float(d) > now_ms
                              for r, d in zip(refusals, deadlines, strict=True)):  # fmt: skip
            # Refused as too near for a batch that did not run: the mean may be stale (one slow batch, a warm-up),
            # and with nothing running it would never be measured again. It shrinks until a request gets through.
            self.batch_ms *= 1 - self.SMOOTHING
        return [next(answers) if refused is None else refuse(refused) for refused in refusals], refusals


def counts(refusals: list[ServingError | None]) -> tuple[int, int]:
    """(requests the pipeline ran, requests refused for their deadline)."""
    return refusals.count(None), sum(isinstance(refused, DeadlineExceeded) for refused in refusals)


def lower_names(headers: dict[str, Any]) -> dict[str, Any]:
    """A request's headers with their names in lower case: TorchServe passes them as the client sent them."""
    return {name.lower(): value for name, value in headers.items()}


def header(headers: dict[str, Any], name: str = DEADLINE_HEADER) -> Any:
    """A request header by name, whatever its case, from ``lower_names``' headers."""
    value = headers.get(name.lower())
    return value.decode() if isinstance(value, bytes) else value
