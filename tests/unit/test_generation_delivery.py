"""Getting the engine's output out without holding it up: events held per request until taken (merging, order, an
engine paced by its consumer), first tokens before the decode, and metrics published off the engine thread."""

from __future__ import annotations

import itertools
import threading
import time

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from handlers.generation import Engine, EngineLoop, Event, SamplingParams
from handlers.generation.mailbox import Mailbox
from handlers.generation.metrics import Publisher, StepMetrics, combine
from tests.unit.lm_fixtures import tiny_lm


def event(rid: str, text: str, ids: list[int], reason: str | None = None, tokens: int = 0) -> Event:
    return Event(rid, text, ids, reason is not None, reason, 3, tokens, "boom" if reason == "error" else None)


def test_a_request_s_waiting_steps_merge_into_one_event_and_requests_keep_their_order():
    box = Mailbox()
    box.put(event("a", "he", [1], tokens=1))
    box.put(event("b", "x", [9], tokens=1))
    box.put(event("a", "llo", [2], tokens=2))
    box.put(event("a", "!", [3], "length", tokens=3))
    taken = box.take(timeout=0)
    assert [(e.request_id, e.text, e.token_ids, e.finish_reason, e.completion_tokens) for e in taken] == [
        ("a", "hello!", [1, 2, 3], "length", 3),
        ("b", "x", [9], None, 1),
    ]
    assert box.take(timeout=0) == []


def test_an_abrupt_end_is_not_merged_into_the_text_before_it():
    box = Mailbox()
    box.put(Event("a", "he", [1], False, None, 3, 1, logprobs=[{"p": 1}]))
    box.put(Event("a", "y", [2], False, None, 3, 2, logprobs=[{"p": 2}]))
    box.put(event("a", "", [], "error", tokens=2))
    first, last = box.take(timeout=0)
    assert (first.text, first.logprobs, first.finished) == ("hey", [{"p": 1}, {"p": 2}], False)
    assert (last.finish_reason, last.error) == ("error", "boom")


def test_take_waits_for_news_and_close_wakes_it():
    box = Mailbox()
    threading.Timer(0.05, box.put, [event("a", "x", [1])]).start()
    assert [e.text for e in box.take(timeout=5)] == ["x"]
    threading.Timer(0.05, box.close).start()
    started = time.monotonic()
    assert box.take(timeout=5) == [] and time.monotonic() - started < 4
    assert box.closed and box.take(timeout=5) == []  # closed: no more waiting


def test_wake_ends_a_take_with_nothing_even_when_it_comes_first():
    box = Mailbox()
    box.wake()  # before the take: that take does not wait
    started = time.monotonic()
    assert box.take(timeout=5) == [] and time.monotonic() - started < 1
    threading.Timer(0.05, box.wake).start()
    started = time.monotonic()
    assert box.take(timeout=5) == [] and time.monotonic() - started < 4
    threading.Timer(0.05, box.put, [event("a", "x", [1])]).start()  # a wake is used once
    assert [e.text for e in box.take(timeout=5)] == ["x"]


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory) -> Engine:
    torch.set_num_threads(1)  # tiny models gain nothing from more (the module's threads are restored after it)
    path = tiny_lm("gpt2", tmp_path_factory.mktemp("tiny_gpt2") / "gpt2")
    return Engine(AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path), 4)


def test_a_paced_engine_runs_at_most_its_steps_ahead_of_the_consumer(gpt2):
    box = Mailbox()
    loop = EngineLoop(gpt2, on_step=lambda events: box.step_done(), pace=lambda: box.wait_room(2))
    try:
        loop.submit("r", "the", SamplingParams(max_tokens=40, ignore_eos=True), box.put)
        time.sleep(0.5)  # nobody takes: the engine stops after two steps
        held = box.take(timeout=5)
        assert len(held) == 1 and len(held[0].token_ids) == 2 and not held[0].finished
        events = held
        while not events[-1].finished:
            events += box.take(timeout=5)
        assert events[-1].finish_reason == "length" and sum(len(e.token_ids) for e in events) == 40
    finally:
        box.close()
        loop.stop()


def test_newcomers_first_tokens_can_go_out_before_the_running_rows_decode(gpt2):
    greedy = SamplingParams(max_tokens=6, ignore_eos=True, temperature=0)
    alone = gpt2.generate("a newcomer", greedy)[1]
    gpt2.add("running", "the", greedy)
    gpt2.step()
    gpt2.add("new", "a newcomer", greedy)
    early: list[list[Event]] = []
    late = gpt2.step(on_prefilled=early.append)
    assert [(e.request_id, e.token_ids) for e in early[0]] == [("new", alone[:1])]
    assert [e.request_id for e in late] == ["running"]  # decoded after the newcomer's token was handed out
    events = [e for e in early[0] + late if e.request_id == "new"]
    while gpt2.has_work:
        events += [e for e in gpt2.step(on_prefilled=early.append) if e.request_id == "new"]
    assert [t for e in events for t in e.token_ids] == alone  # the same tokens as alone


def test_steps_metrics_combine_and_are_published_off_the_caller_s_thread():
    first = StepMetrics([0.1], [], 5, 1, {}, running=1, waiting=2)
    second = StepMetrics([0.2], [0.01], 3, 2, {"length": 1}, running=2, waiting=0)
    third = StepMetrics([], [0.02], 0, 2, {"length": 1, "stop": 1}, running=0, waiting=0)
    total = combine([first, second, third])
    assert (total.time_to_first_token, total.inter_token_latency) == ([0.1, 0.2], [0.01, 0.02])
    assert (total.prompt_tokens, total.generation_tokens, total.finished) == (8, 5, {"length": 2, "stop": 1})
    assert (total.running, total.waiting) == (0, 0)  # the gauges as the last step left them
    published, threads = [], []

    def publish(step: StepMetrics) -> None:
        threads.append(threading.current_thread())
        published.append(step)
        if len(published) == 1:
            raise RuntimeError("a metrics fault is logged, and publishing goes on")

    publisher = Publisher(publish)
    for step in (first, second, third):
        publisher.put(step)
    deadline = time.monotonic() + 10
    while sum(s.generation_tokens for s in published) < 5:
        assert time.monotonic() < deadline, "not published"
        time.sleep(0.01)
    assert threading.current_thread() not in threads


def test_a_publisher_with_an_interval_combines_the_steps_between_its_calls_and_loses_none():
    calls: list[tuple[float, StepMetrics]] = []
    publisher = Publisher(lambda step: calls.append((time.monotonic(), step)), interval_s=0.2)
    started = time.monotonic()
    for i in range(30):  # 30 steps over 0.3 s or more: a call per 0.2 s of it, not one per step
        publisher.put(StepMetrics([], [0.01], 0, 1, {"length": 1} if i == 29 else {}, running=1, waiting=0))
        time.sleep(0.01)
    putting_s = time.monotonic() - started
    deadline = time.monotonic() + 10
    while sum(step.generation_tokens for _, step in calls) < 30:
        assert time.monotonic() < deadline, "not every step was published"
        time.sleep(0.01)
    assert 2 <= len(calls) <= 2 + putting_s / 0.2
    assert all(later - earlier >= 0.19 for (earlier, _), (later, _) in itertools.pairwise(calls))
    assert sum(len(step.inter_token_latency) for _, step in calls) == 30  # every observation kept
    assert sum(step.finished.get("length", 0) for _, step in calls) == 1


def test_an_idle_delivery_thread_sleeps_and_still_polls_the_next_request_s_cancellation(gpt2):
    loop = EngineLoop(gpt2, deliver_apart=True)
    takes, take = [], loop._mailbox.take
    loop._mailbox.take = lambda timeout=None: takes.append(timeout) or take(timeout)
    try:
        time.sleep(0.3)  # nothing in flight: no poll every few ms (an idle model would wake ~60 times here)
        assert len(takes) <= 1 and all(timeout is None for timeout in takes)  # at most one, waiting without a limit
        events, asked = [], threading.Event()

        def is_cancelled() -> bool:
            asked.set()
            return True  # its client is gone at once

        loop.submit("r", "the", SamplingParams(max_tokens=200, ignore_eos=True), events.append, is_cancelled)
        assert asked.wait(5), "the new request's cancellation was never asked"
        deadline = time.monotonic() + 10
        while not (events and events[-1].finished):
            assert time.monotonic() < deadline, "the cancelled request did not end"
            time.sleep(0.01)
        assert events[-1].finish_reason == "cancelled"
    finally:
        loop.stop()
