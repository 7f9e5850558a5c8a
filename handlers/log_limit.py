"""Rate-limited logging for what a client can trigger: a flood of bad requests must not flood the server's log."""

from __future__ import annotations

import logging
import time


class RateLimit(logging.Filter):
    """Let at most ``burst`` records of each message template through per ``period`` seconds; the first one let
    through after a quiet spell says how many were dropped, so nothing is hidden without a trace."""

    def __init__(self, burst: int = 5, period: float = 60.0, clock=time.monotonic):
        super().__init__()
        self.burst, self.period, self.clock = burst, period, clock
        self.windows: dict[tuple[str, object], list] = {}  # (logger, template) -> [window start, sent, dropped]

    def filter(self, record: logging.LogRecord) -> bool:
        now = self.clock()
        window = self.windows.setdefault((record.name, record.msg), [now, 0, 0])
        if now - window[0] >= self.period:
            if window[2]:
                record.msg = f"{record.msg} [{window[2]} more like this in the last {now - window[0]:.0f} s not logged]"
            window[:] = [now, 0, 0]
        if window[1] >= self.burst:
            window[2] += 1
            return False
        window[1] += 1
        return True


def rate_limited(name: str, burst: int = 5, period: float = 60.0) -> logging.Logger:
    """``logging.getLogger(name)`` with a ``RateLimit`` on it (once)."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, RateLimit) for f in logger.filters):
        logger.addFilter(RateLimit(burst, period))
    return logger
