"""The deadline check of each batch (``handlers/deadline.py``): what runs, what is refused, and the batch time."""

from __future__ import annotations

import time

import pytest

from handlers.deadline import DeadlineExceeded, DeadlineGate


def now_ms() -> float:
    return time.time() * 1e3


def test_a_request_whose_deadline_is_nearer_than_a_batch_is_refused_and_the_others_run():
    gate = DeadlineGate()
    gate.observe(200.0)
    ran = []
    deadlines = [now_ms() + 50, now_ms() + 60_000, None]
    answers, refusals = gate.run(deadlines, lambda keep: ran.extend(keep) or ["a"] * len(keep), lambda e: e)
    assert ran == [1, 2] and answers[1:] == ["a", "a"]
    assert isinstance(refusals[0], DeadlineExceeded) and "answered late" in refusals[0].message
    assert answers[0] is refusals[0]


def test_the_batch_time_is_a_moving_mean_of_the_timed_runs_only():
    gate = DeadlineGate()
    assert gate.batch_ms == 0.0  # nothing timed yet: only a deadline that has passed is refused
    gate.run([None], lambda keep: time.sleep(0.03) or [None], lambda e: e)
    first = gate.batch_ms
    assert first >= 30
    gate.observe(first + 100)
    assert gate.batch_ms == pytest.approx(first + DeadlineGate.SMOOTHING * 100)
    before = gate.batch_ms
    gate.run([None], lambda keep: time.sleep(0.05) or [None], lambda e: e, timed=False)  # an explanation, say
    assert gate.batch_ms == before
    gate.run([now_ms() - 1], lambda keep: pytest.fail("nothing should run"), lambda e: e)  # all refused: untimed
    assert gate.batch_ms == before


def test_a_stale_batch_time_cannot_refuse_every_request_for_ever():
    """One slow batch (a warm-up, say) must not keep refusing requests that nothing runs to re-measure it."""
    gate = DeadlineGate()
    gate.observe(300.0)
    ran = []
    for _ in range(20):
        gate.run([now_ms() + 80], lambda keep: ran.extend(keep) or [None] * len(keep), lambda e: e)
        if ran:
            break
    assert ran == [0] and gate.batch_ms < 80
    passed = DeadlineGate()
    passed.observe(300.0)
    passed.run([now_ms() - 5], lambda keep: pytest.fail("nothing should run"), lambda e: e)
    assert passed.batch_ms == 300.0  # a deadline that had passed says nothing about the batch time


def test_a_full_batch_keeps_the_reply_margin_free_and_a_batch_with_room_does_not():
    """A full batch means a busy server, whose answers take longer to reach their clients: a request with less than
    the margin left is refused there, and the same request in a batch with room runs."""
    gate = DeadlineGate(max_batch_size=2, reply_margin_ms=5_000.0)
    gate.observe(10.0)
    ran = []
    answers, refusals = gate.run([now_ms() + 3_000, now_ms() + 60_000],
                                 lambda keep: ran.extend(keep) or ["a"] * len(keep), lambda e: e)  # fmt: skip
    assert ran == [1] and answers[1] == "a"
    assert isinstance(refusals[0], DeadlineExceeded) and "its answer up to 5000 ms more" in refusals[0].message
    ran.clear()
    gate.run([now_ms() + 3_000], lambda keep: ran.extend(keep) or ["a"] * len(keep), lambda e: e)
    assert ran == [0]  # one request of two: the queue was empty
    unbounded = DeadlineGate(reply_margin_ms=5_000.0)  # no batch size known: never full
    assert unbounded.run([now_ms() + 3_000, now_ms() + 3_000], lambda keep: ["a"] * len(keep), lambda e: e)[0] == [
        "a", "a"]  # fmt: skip
