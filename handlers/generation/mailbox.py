"""Engine events held per request until the server's side takes them, so that sending never holds a step up.

The engine thread ``put``s each step's events and goes on with the next step; the consumer (Triton's sender thread,
TorchServe's ``handle``) ``take``s everything gathered since its last take. A consumer slower than the engine gets a
request's steps merged into one event (text and tokens joined, the last step's counts and end): fewer, larger chunks,
as vLLM's servers send under load, instead of an engine that waits for each chunk to be written.

A consumer that must hold the engine back calls ``wait_room`` before each step (the engine thread, through its loop's
``pace``) and ``step_done`` after it: the engine then runs at most that many steps ahead of the last ``take``, so a
consumer that stops taking (TorchServe calls no more ``handle`` once its clients are gone) stops the engine too.
"""

from __future__ import annotations

import threading
from dataclasses import replace

from handlers.generation.sequence import Event

ABRUPT = ("cancelled", "error")  # endings that are answered on their own, not merged into text


def merge(first: Event, then: Event) -> Event:
    """Two consecutive events of one request as one: ``then``'s state, both steps' text, tokens and logprobs."""
    logprobs = (first.logprobs or []) + (then.logprobs or [])
    return replace(then, text=first.text + then.text, token_ids=first.token_ids + then.token_ids,
                   logprobs=logprobs or None)  # fmt: skip


class Mailbox:
    """Per-request queues of events, merged as they wait; thread-safe."""

    def __init__(self):
        self._cond = threading.Condition()
        self._waiting: dict[str, list[Event]] = {}  # insertion order: the order requests first had news
        self._closed = False
        self._woken = False  # ``wake`` was called since the last take
        self._steps = 0  # steps whose events were put and not taken yet

    def put(self, event: Event) -> None:
        with self._cond:
            events = self._waiting.setdefault(event.request_id, [])
            if events and not events[-1].finished and event.finish_reason not in ABRUPT:
                events[-1] = merge(events[-1], event)
            else:
                events.append(event)
            self._cond.notify_all()

    def step_done(self) -> None:
        with self._cond:
            if self._waiting:
                self._steps += 1

    def wait_room(self, steps: int) -> None:
        """Wait while ``steps`` steps or more are waiting to be taken (or until closed)."""
        with self._cond:
            while self._steps >= steps and not self._closed:
                self._cond.wait()

    def take(self, timeout: float | None = None) -> list[Event]:
        """Everything waiting, oldest request first; waits up to ``timeout`` for something (``[]`` if nothing came,
        once closed, or when ``wake`` was called)."""
        with self._cond:
            if not self._waiting and not self._closed and not self._woken:
                self._cond.wait(timeout)
            waiting, self._waiting, self._steps, self._woken = self._waiting, {}, 0, False
            self._cond.notify_all()  # the engine thread may wait for room
        return [event for events in waiting.values() for event in events]

    def wake(self) -> None:
        """End the current (or the next) ``take``'s wait, with nothing if nothing came."""
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    def close(self) -> None:
        """Wake a waiting ``take``; later takes do not wait."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed
