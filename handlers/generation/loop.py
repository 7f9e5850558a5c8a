"""The engine's own thread: it steps while there is work and sleeps when there is none.

Server adapters call ``submit`` from their request threads (or ``stream`` for a blocking iterator). Validation runs in
the caller's thread, so a bad request is answered with its 4xx before any token; the request is then handed to the
engine thread, which alone touches the engine. Each event comes back through the request's ``on_event``, and each
request's ``is_cancelled`` (Triton's ``request.is_cancelled``, a closed HTTP connection) is asked whether its client
is gone; an ``on_event`` that raises means its consumer is gone too. Either way that request is cancelled at the next
step and the others go on.

Where ``on_event`` and ``is_cancelled`` run: by default on the engine thread, after and before each step (they must
be quick: put into a queue). With ``deliver_apart=True`` a delivery thread of its own calls them, so that slow ones
(Triton's response senders are a round trip to the server process each) never hold a step up: each step's events
wait in a ``Mailbox``, merged per request while the delivery thread is busy, and ``is_cancelled`` is asked every
``CANCEL_POLL_S`` at most while any request is in the engine; with none, the delivery thread sleeps until one comes
(an idle model must not wake 200 times a second on the cores its server's other models share).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from handlers.generation import cores
from handlers.generation.engine import GENERIC_ERROR, Engine
from handlers.generation.mailbox import Mailbox
from handlers.generation.sampling import SamplingParams
from handlers.generation.sequence import Event

log = logging.getLogger(__name__)
STOPPING = "server stopping"
CANCEL_POLL_S = 0.005  # with deliver_apart: how often each request's is_cancelled is asked, at most


@dataclass
class _Subscriber:
    on_event: Callable[[Event], None]
    is_cancelled: Callable[[], bool] | None


class EngineLoop:
    """Owns an ``Engine`` and runs its ``step()`` on a background thread."""

    def __init__(self, engine: Engine, name: str = "generation-engine",
                 on_step: Callable[[list[Event]], None] | None = None, deliver_apart: bool = False,
                 pace: Callable[[], None] | None = None, bind_cores: bool = False):  # fmt: skip
        """``on_step`` sees every step's events on the engine thread (metrics); it must not raise. ``deliver_apart``:
        call ``on_event`` and ``is_cancelled`` on a delivery thread of their own (see the module's notes). ``pace`` is
        called on the engine thread before each step and may block to hold the engine back (``Mailbox.wait_room``).
        ``bind_cores``: the engine's threads get cores of their own, and every other thread of this process, now
        and later, the rest (``cores.py``; a server's process, not a shared one such as a test's)."""
        self.engine = engine
        self._on_step, self._pace = on_step, pace
        self._cond = threading.Condition()
        self._subscribers: dict[str, _Subscriber] = {}  # every request not finished yet, whatever its stage
        self._inbox: list[tuple[str, list[int], SamplingParams]] = []
        self._cancels: list[str] = []
        self._stopping = False
        self._mailbox = Mailbox() if deliver_apart else None
        self._engine_cores = cores.reserve(torch.get_num_threads()) if bind_cores else None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self._delivery = None
        if deliver_apart:
            self._delivery = threading.Thread(target=self._run_delivery, name=f"{name}-delivery", daemon=True)
            self._delivery.start()

    def submit(
        self,
        request_id: str,
        prompt: str | list[int],
        params: SamplingParams,
        on_event: Callable[[Event], None],
        is_cancelled: Callable[[], bool] | None = None,
        admitted: bool = False,
    ) -> None:
        """Check the request here (``InvalidInput`` propagates), then queue it for the engine thread. ``admitted``:
        ``admit`` already let it in (with the other choices of its request)."""
        ids = self.engine.prepare(prompt, params)
        with self._cond:
            if self._stopping:
                raise RuntimeError("the generation engine is stopping")
            if not admitted:
                self.engine.admit(queued=len(self._inbox))  # Overloaded (429): it would wait too long for a slot
            if request_id in self._subscribers:
                raise ValueError(f"request {request_id!r} is already in the engine")
            self._subscribers[request_id] = _Subscriber(on_event, is_cancelled)
            self._inbox.append((request_id, ids, params))
            self._cond.notify()
        if self._mailbox is not None:  # the delivery thread may sleep with nothing to poll: it polls this one now
            self._mailbox.wake()

    def admit(self, count: int = 1) -> None:
        """``Overloaded`` (429) if ``count`` more requests would wait too long for a slot."""
        with self._cond:
            self.engine.admit(count, queued=len(self._inbox))

    def cancel(self, request_id: str) -> None:
        """The request ends at the next step with a "cancelled" event; an unknown id is ignored."""
        with self._cond:
            self._cancels.append(request_id)
            self._cond.notify()

    def stream(
        self, request_id: str, prompt: str | list[int], params: SamplingParams, timeout: float | None = None
    ) -> EventStream:
        """Submit and return a blocking iterator over the request's events; closing it early cancels the request.

        ``timeout`` bounds the wait for each event (``TimeoutError``, and the request is cancelled).
        """
        events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self.submit(request_id, prompt, params, on_event=events.put)
        return EventStream(self, request_id, events, timeout)

    def stats(self) -> dict[str, int]:
        """Gauges for metrics: requests running in the batch, and waiting for a slot."""
        with self._cond:
            queued = len(self._inbox)
        return {"running": self.engine.running, "waiting": self.engine.waiting + queued}

    def stop(self, timeout: float | None = 10.0) -> None:
        """End every request with the error "server stopping", and the thread. Idempotent."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)
        if self._delivery is not None:  # it delivers what the engine thread ended with, then stops
            self._mailbox.close()
            self._delivery.join(timeout)

    # --- the engine thread -------------------------------------------------------------------------------------

    def _run(self) -> None:
        if self._engine_cores:
            cores.bind_current_thread(self._engine_cores)
        while True:
            with self._cond:
                while not (self._inbox or self._cancels or self._stopping or self.engine.has_work):
                    self._cond.wait()
                if self.engine.filling(len(self._inbox)):  # static batching: a moment for the batch to fill
                    self._cond.wait_for(lambda: self._stopping or not self.engine.filling(len(self._inbox)),
                                        timeout=self.engine.fill_wait_s)  # fmt: skip
                inbox, self._inbox = self._inbox, []
                cancels, self._cancels = self._cancels, []
                stopping = self._stopping
            try:
                if stopping:
                    self._abort(inbox, STOPPING)
                    return
                self._iterate(inbox, cancels)
            except Exception:  # a bug in the engine itself: fail what is in flight, keep serving
                log.exception("generation engine step failed")
                self._abort([], GENERIC_ERROR)

    def _iterate(self, inbox: list[tuple[str, list[int], SamplingParams]], cancels: list[str]) -> None:
        for request_id, ids, params in inbox:
            try:
                self.engine.add(request_id, ids, params)
            except Exception as exc:  # checked at submit already; only a race could land here
                log.warning("request %s refused by the engine: %s", request_id, exc)
                self._emit(Event(request_id, "", [], True, "error", len(ids), 0, GENERIC_ERROR))
        if self._mailbox is None:
            cancels += self._gone()
        for request_id in cancels:
            self.engine.cancel(request_id)
        if self._pace is not None:
            self._pace()
        early: list[Event] = []

        def hand_out(prefilled: list[Event]) -> None:
            # Newcomers' first tokens go out while the running rows decode. On TorchServe that makes an extra
            # handle round: time to first token -28% at 16 requests (6 of 6 rounds), tokens/s -4 to -6%.
            early.extend(prefilled)
            self._emit_all(prefilled)

        events = self.engine.step(on_prefilled=hand_out)
        self._emit_all(events)
        if self._on_step is not None:
            self._on_step(early + events)

    def _abort(self, inbox: list[tuple[str, list[int], SamplingParams]], error: str) -> None:
        events = [Event(rid, "", [], True, "error", len(ids), 0, error) for rid, ids, _ in inbox]
        self._emit_all(events + self.engine.abort_all(error))

    def _emit_all(self, events: list[Event]) -> None:
        for event in events:
            self._emit(event)

    def _emit(self, event: Event) -> None:
        if self._mailbox is None:
            self._deliver(event)
        else:
            self._mailbox.put(event)

    def _run_delivery(self) -> None:
        polled = 0.0
        while True:
            with self._cond:
                polling = bool(self._subscribers)
            events = self._mailbox.take(timeout=CANCEL_POLL_S if polling else None)
            for event in events:
                self._deliver(event)
            if time.monotonic() - polled >= CANCEL_POLL_S:
                polled = time.monotonic()
                for request_id in self._gone():
                    self.cancel(request_id)
            if not events and self._mailbox.closed:
                return

    def _gone(self) -> list[str]:
        """The requests whose ``is_cancelled`` says their client went away."""
        with self._cond:
            subscribers = list(self._subscribers.items())
        return [rid for rid, sub in subscribers if sub.is_cancelled is not None and _asks_to_cancel(sub)]

    def _deliver(self, event: Event) -> None:
        with self._cond:
            subscriber = self._subscribers.get(event.request_id)
            if event.finished:
                self._subscribers.pop(event.request_id, None)
        if subscriber is None:
            return  # its consumer went away (on_event raised) and the request was cancelled
        try:
            subscriber.on_event(event)
        except Exception:
            log.warning("on_event of request %s raised; cancelling it", event.request_id, exc_info=True)
            with self._cond:
                self._subscribers.pop(event.request_id, None)
            self.cancel(event.request_id)


def _asks_to_cancel(subscriber: _Subscriber) -> bool:
    try:
        return bool(subscriber.is_cancelled())
    except Exception:  # a consumer that cannot even say: treat it as gone
        log.warning("is_cancelled raised; cancelling the request", exc_info=True)
        return True


class EventStream(Iterator[Event]):
    """A blocking iterator over one request's events; ``close()`` (or leaving a ``with`` block) cancels it."""

    def __init__(self, loop: EngineLoop, request_id: str, events: queue.SimpleQueue, timeout: float | None):
        self.request_id = request_id
        self._loop, self._events, self._timeout = loop, events, timeout
        self._done = False

    def __next__(self) -> Event:
        if self._done:
            raise StopIteration
        try:
            event = self._events.get(timeout=self._timeout)
        except queue.Empty:
            self.close()
            raise TimeoutError(f"no event from request {self.request_id!r} in {self._timeout} s") from None
        if event.finished:
            self._done = True
        return event

    def close(self) -> None:
        if not self._done:
            self._done = True
            self._loop.cancel(self.request_id)

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()
