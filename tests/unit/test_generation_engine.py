"""The continuous-batching engine on tiny random causal LMs: parity with ``generate``, sampling, stops, cancels."""

from __future__ import annotations

import math
import threading
import time

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from handlers.errors import InvalidInput, Overloaded
from handlers.generation import Engine, EngineLoop, Event, SamplingParams, sample
from handlers.generation import engine as engine_module
from handlers.generation.admission import Admission, overloaded_from
from handlers.generation.detokenize import Detokenizer
from tests.unit.lm_fixtures import KINDS, tiny_lm

PROMPTS = [
    "the",
    "the model serves tokens to every client",
    "café 日本語 🙂",
    "a cancelled stream frees its slot at once while the engine batches requests step by step",
    "señor año",
]
MAX_TOKENS = [20, 7, 13, 25, 4]  # they end at different steps, so rows leave mid-flight
GREEDY = {"temperature": 0}
NEAR_TIE = 1e-4


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy CPU their spinning costs 10-40x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def lms(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("tiny_lms")
    loaded = {}
    for kind in KINDS:
        path = tiny_lm(kind, root / kind)
        loaded[kind] = (AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path))
    return loaded


@pytest.fixture()
def gpt2(lms) -> Engine:
    model, tokenizer = lms["gpt2"]
    return Engine(model, tokenizer, max_running=4)


def run(engine: Engine, requests: dict[str, tuple], join_every: int = 1) -> dict[str, list[Event]]:
    """Add one request every ``join_every`` steps (they join mid-flight; 0: all before the first step), step to the
    end, collect events."""
    pending, events, steps = list(requests.items()), {rid: [] for rid in requests}, 0
    while pending or engine.has_work:
        while pending and (join_every == 0 or steps % join_every == 0):
            rid, (prompt, params) = pending.pop(0)
            engine.add(rid, prompt, params)
            if join_every:
                break
        for event in engine.step():
            events[event.request_id].append(event)
        steps += 1
        assert steps < 1000
    return events


def tokens(events: list[Event]) -> list[int]:
    return [t for e in events for t in e.token_ids]


def text(events: list[Event]) -> str:
    return "".join(e.text for e in events)


def assert_same_greedy(got: list[int], expected: list[int], logits: list[torch.Tensor]) -> None:
    """Equal tokens; a difference is accepted only where the reference's top-2 logits are within 1e-4 (float noise
    on a near-tie), and the rest, having diverged, is not compared."""
    for pos, (mine, theirs) in enumerate(zip(got, expected, strict=False)):
        if mine != theirs:
            row = logits[pos].float()
            gap = float(row[theirs] - row[mine])
            assert gap < NEAR_TIE, f"token {pos}: {mine} != {theirs}, logit gap {gap:.2e} is no near-tie"
            return
    assert got == expected


@pytest.mark.parametrize("join_every", [0, 2], ids=["prefilled-together", "joining-mid-flight"])
@pytest.mark.parametrize("kind", KINDS)
def test_greedy_tokens_equal_generate_while_requests_join_and_leave(lms, kind, join_every):
    model, tokenizer = lms[kind]
    engine = Engine(model, tokenizer, max_running=3)
    requests = {
        str(i): (p, SamplingParams(max_tokens=n, **GREEDY))
        for i, (p, n) in enumerate(zip(PROMPTS, MAX_TOKENS, strict=True))
    }
    assert_generate_answers(model, tokenizer, run(engine, requests, join_every=join_every))
    assert engine.running == engine.waiting == 0 and engine._cache is None


def assert_generate_answers(model, tokenizer, events: dict[str, list[Event]]) -> None:
    """Request ``str(i)`` (PROMPTS[i], MAX_TOKENS[i], greedy) got ``model.generate``'s tokens, then one end."""
    eos = tokenizer.eos_token_id
    for i, (prompt, n) in enumerate(zip(PROMPTS, MAX_TOKENS, strict=True)):
        inputs = tokenizer(prompt, return_tensors="pt")
        out = model.generate(
            **inputs, do_sample=False, max_new_tokens=n, output_logits=True, return_dict_in_generate=True
        )
        expected = out.sequences[0, inputs["input_ids"].shape[1] :].tolist()
        expected = expected[: expected.index(eos) + 1] if eos in expected else expected
        assert_same_greedy(tokens(events[str(i)]), expected, [row[0] for row in out.logits])
        last = events[str(i)][-1]
        assert last.finished and last.prompt_tokens == inputs["input_ids"].shape[1]
        assert last.completion_tokens == len(tokens(events[str(i)]))
        assert all(not e.finished for e in events[str(i)][:-1])


def test_the_batch_cache_keeps_no_column_that_is_padding_in_every_row(lms):
    model, tokenizer = lms["llama"]
    engine = Engine(model, tokenizer, max_running=4)
    engine.add("long", PROMPTS[3], SamplingParams(max_tokens=3, **GREEDY))
    engine.add("short", PROMPTS[0], SamplingParams(max_tokens=10, **GREEDY))
    while engine.has_work:
        engine.step()
        if engine._cache is not None:
            assert engine._cache.get_seq_length() == max(s.cached for s in engine._rows)
            assert engine._cache.layers[0].keys.shape[0] == engine.running


def test_a_seeded_request_samples_the_same_alone_and_in_a_busy_batch(gpt2):
    seeded = SamplingParams(max_tokens=12, temperature=0.8, top_p=0.9, top_k=20, seed=7, ignore_eos=True)
    alone = gpt2.generate(PROMPTS[1], seeded)[1]
    others = {
        f"o{i}": (p, SamplingParams(max_tokens=15, temperature=1.2, ignore_eos=True)) for i, p in enumerate(PROMPTS)
    }
    busy = run(gpt2, {"o0": others.pop("o0"), "seeded": (PROMPTS[1], seeded), **others})
    assert tokens(busy["seeded"]) == alone
    assert gpt2.generate(PROMPTS[1], SamplingParams(**{**seeded.__dict__, "seed": 8}))[1] != alone


def test_sampling_keeps_to_top_k_and_top_p():
    logits = torch.tensor([0.0, 5.0, 4.0, 1.0, -2.0])
    generator = torch.Generator().manual_seed(0)
    assert sample(logits, SamplingParams(temperature=0), None) == 1
    assert {sample(logits, SamplingParams(top_k=2), generator) for _ in range(200)} == {1, 2}
    assert {sample(logits, SamplingParams(top_p=0.01), generator) for _ in range(50)} == {1}
    assert {sample(logits, SamplingParams(top_p=0.8), generator) for _ in range(200)} == {1, 2}


def test_a_stop_string_ends_the_text_before_it_and_is_never_streamed(gpt2):
    full, _, reason = gpt2.generate("the model", SamplingParams(max_tokens=24, ignore_eos=True, **GREEDY))
    assert reason == "length"
    start = next(i for i in range(len(full) // 3, len(full)) if "\ufffd" not in full[i : i + 3])
    stop = full[start : start + 3]
    events = run(gpt2, {"r": ("the model", SamplingParams(max_tokens=24, stop=("never there", stop), **GREEDY))})["r"]
    assert text(events) == full[: full.find(stop)]
    assert events[-1].finish_reason == "stop" and len(tokens(events)) < 24
    streamed = ""
    for event in events:
        streamed += event.text
        assert stop not in streamed
    missing = run(gpt2, {"r": ("the model", SamplingParams(max_tokens=24, stop="never there", **GREEDY))})["r"]
    assert text(missing) == full and missing[-1].finish_reason == "length"


def test_streaming_holds_back_what_may_begin_a_stop_string(lms):
    tokenizer = lms["gpt2"][1]
    ids = tokenizer("aa the model serves tokens")["input_ids"]
    detok = Detokenizer(tokenizer, [], stop=("model serves",))
    emitted = ""
    for token in ids:
        emitted += detok.add(token)
        assert "model" not in emitted and detok.text.startswith(emitted)
        if detok.stopped:
            break
    assert detok.stopped and emitted + detok.finish() == "aa the "


def test_eos_ends_with_stop_unless_ignored(lms):
    model, tokenizer = lms["gpt2"]
    free = Engine(model, tokenizer).generate("the model", SamplingParams(max_tokens=20, ignore_eos=True, **GREEDY))[1]
    eos = free[5]  # pretend this token is an EOS: the greedy run reaches it at its first occurrence
    first = free.index(eos)
    original = model.generation_config.eos_token_id
    try:
        model.generation_config.eos_token_id = [tokenizer.eos_token_id, eos]
        engine = Engine(model, tokenizer)
        text_eos, ids, reason = engine.generate("the model", SamplingParams(max_tokens=20, **GREEDY))
        assert (ids, reason) == (free[: first + 1], "stop")
        # The EOS token's text is not emitted: the text is that of the tokens before it
        cut = engine.generate("the model", SamplingParams(max_tokens=first, ignore_eos=True, **GREEDY))
        assert cut[0] == text_eos and cut[2] == "length"
        ignored = engine.generate("the model", SamplingParams(max_tokens=20, ignore_eos=True, **GREEDY))
        assert (ignored[1], ignored[2]) == (free, "length")
    finally:
        model.generation_config.eos_token_id = original


def test_cancel_frees_the_slot_for_a_waiting_request(lms):
    model, tokenizer = lms["qwen2"]
    engine = Engine(model, tokenizer, max_running=2)
    long = SamplingParams(max_tokens=40, ignore_eos=True, **GREEDY)
    for rid in ("a", "b", "c", "d"):
        engine.add(rid, PROMPTS[1], long)
    engine.step()
    assert (engine.running, engine.waiting) == (2, 2)
    engine.cancel("a")
    engine.cancel("d")  # still waiting: it never runs
    engine.cancel("unknown")
    events = {e.request_id: e for e in engine.step()}
    assert (events["a"].finished, events["a"].finish_reason) == (True, "cancelled")
    assert (events["d"].finish_reason, events["d"].completion_tokens) == ("cancelled", 0)
    assert events["c"].token_ids and not events["c"].finished
    assert (engine.running, engine.waiting) == (2, 0)
    engine.cancel("b")
    engine.cancel("c")
    ends = engine.step()
    assert sorted(e.request_id for e in ends) == ["b", "c"] and all(e.finish_reason == "cancelled" for e in ends)
    assert (engine.running, engine.has_work) == (0, False)
    assert engine.step() == []


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({"max_tokens": 0}, "max_tokens must be at least 1, not 0"),
        ({"max_tokens": 5000}, "max_tokens must be at most 100, not 5000"),
        ({"max_tokens": "5"}, "max_tokens must be an integer, not '5'"),
        ({"max_tokens": True}, "max_tokens must be an integer, not True"),
        ({"max_tokens": 2.0}, "max_tokens must be an integer"),
        ({"temperature": -1}, "temperature must be at least 0"),
        ({"temperature": "hot"}, "temperature must be a finite number, not 'hot'"),
        ({"temperature": math.nan}, "temperature must be a finite number, not nan"),
        ({"top_p": 0}, r"top_p must be in \(0, 1\], not 0"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\], not 1.5"),
        ({"top_k": -1}, "top_k must be at least 0, not -1"),
        ({"seed": 1.5}, "seed must be an integer, not 1.5"),
        ({"stop": 5}, "stop must be a string or a list of strings, not 5"),
        ({"stop": ["ok", 3]}, "stop must be a string or a list of strings"),
        ({"stop": [""]}, "stop must not hold an empty string"),
        ({"ignore_eos": "yes"}, "ignore_eos must be true or false"),
        ({"max_tokens": 4, "temprature": 0.5, "n": 2}, r"unknown sampling parameter n, temprature \(known: "),
        ([1, 2], "sampling parameters must be an object"),
    ],
)
def test_a_bad_sampling_parameter_is_refused_by_name(data, named):
    with pytest.raises(InvalidInput, match=named) as caught:
        SamplingParams.from_dict(data, max_tokens_limit=100)
    assert caught.value.http_status == 400


def test_sampling_parameters_from_json():
    params = SamplingParams.from_dict({"max_tokens": 8, "stop": ["a", "b"], "seed": None, "top_k": 5}, 100)
    assert params == SamplingParams(max_tokens=8, stop=("a", "b"), top_k=5)
    assert SamplingParams.from_dict({"stop": "x", "temperature": 0}, 100).stop == ("x",)
    assert SamplingParams.from_dict(None, 100) == SamplingParams()


def test_a_bad_prompt_is_refused_before_anything_is_queued(gpt2):
    ok = SamplingParams(max_tokens=4)
    long_prompt = list(range(300))  # this model's context is 256
    cases = [
        ("", ok, "prompt is empty"),
        ([], ok, "prompt is empty"),
        (long_prompt, ok, "prompt is 300 tokens; this model's context is 256"),
        ([5] * 250, SamplingParams(max_tokens=10), r"prompt \(250 tokens\) \+ max_tokens \(10\) is 260; .* is 256"),
        ([1, 10**6], ok, "prompt token 1 is 1000000; token ids are 0..449"),
        ([1, -1], ok, "prompt token 1 is -1"),
        (42, ok, "prompt must be a string or a list of token ids, not int"),
    ]
    for prompt, params, named in cases:
        with pytest.raises(InvalidInput, match=named):
            gpt2.add("r", prompt, params)
    assert (gpt2.waiting, gpt2.has_work) == (0, False)
    gpt2.add("r", [5] * 246, SamplingParams(max_tokens=10))  # exactly the context
    with pytest.raises(ValueError, match="already in the engine"):
        gpt2.add("r", "the", ok)


def test_a_fault_in_one_request_ends_only_that_one(gpt2, monkeypatch):
    def flaky(logits, params, generator):
        if params.seed == 666:
            raise RuntimeError("boom")
        return sample(logits, params, generator)

    monkeypatch.setattr(engine_module, "sample", flaky)
    requests = {rid: ("the model", SamplingParams(max_tokens=5, seed=seed)) for rid, seed in (("ok", 1), ("bad", 666))}
    events = run(gpt2, requests, join_every=1)
    assert events["bad"][-1].finish_reason == "error" and events["bad"][-1].error == engine_module.GENERIC_ERROR
    assert "boom" not in events["bad"][-1].error
    assert events["ok"][-1].finish_reason in ("length", "stop") and not gpt2.has_work


def test_a_fault_in_the_batched_pass_ends_that_pass_and_the_engine_goes_on(gpt2, monkeypatch):
    params = SamplingParams(max_tokens=6, ignore_eos=True, **GREEDY)
    gpt2.add("a", PROMPTS[0], params)
    gpt2.add("b", PROMPTS[1], params)
    gpt2.step()
    real = gpt2._forward
    monkeypatch.setattr(gpt2, "_forward", lambda *a: (_ for _ in ()).throw(RuntimeError("device lost")))
    events = gpt2.step()
    assert sorted((e.request_id, e.finish_reason) for e in events) == [("a", "error"), ("b", "error")]
    assert (gpt2.running, gpt2.has_work) == (0, False)
    monkeypatch.setattr(gpt2, "_forward", real)
    assert gpt2.generate(PROMPTS[1], params)[2] == "length"


def test_utf8_deltas_never_end_in_a_partial_character(lms):
    model, tokenizer = lms["gpt2"]
    phrase = "€ ☃ 한국어 ∂x"  # none of it in the tokenizer's corpus: every character is split into byte tokens
    ids = tokenizer(phrase)["input_ids"]
    assert any(tokenizer.decode([t]).endswith("\ufffd") for t in ids)
    detok = Detokenizer(tokenizer, tokenizer("the")["input_ids"])
    deltas = [detok.add(t) for t in ids]
    assert "".join(deltas) + detok.finish() == phrase
    assert not any(d.endswith("\ufffd") for d in deltas)
    cut = Detokenizer(tokenizer, [])
    assert cut.add(ids[0]) == "" and cut.finish() == ""  # an incomplete last character is dropped, not emitted
    engine = Engine(model, tokenizer, max_running=8)
    sampled = {str(i): ("café 🙂", SamplingParams(max_tokens=40, seed=i, ignore_eos=True)) for i in range(8)}
    for events in run(engine, sampled).values():
        assert not any(e.text.endswith("\ufffd") for e in events)


def test_models_whose_cache_cannot_be_batched_are_refused(lms):
    from transformers import MistralConfig

    tokenizer = lms["gpt2"][1]
    config = MistralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, vocab_size=len(tokenizer), sliding_window=16)  # fmt: skip
    with pytest.raises(ValueError, match="DynamicSlidingWindowLayer cache layers"):
        Engine(AutoModelForCausalLM.from_config(config), tokenizer)


# --- EngineLoop ----------------------------------------------------------------------------------------------------


def wait_for(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture(params=[False, True], ids=["on-engine-thread", "delivered-apart"])
def loop(gpt2, request):
    engine_loop = EngineLoop(gpt2, deliver_apart=request.param)
    yield engine_loop
    engine_loop.stop()


def test_requests_from_many_threads_all_finish(loop):
    results: dict[str, list[Event]] = {}
    done = threading.Barrier(7)

    def client(i: int) -> None:
        events: list[Event] = []
        finished = threading.Event()

        def on_event(event: Event) -> None:
            events.append(event)
            if event.finished:
                finished.set()

        loop.submit(f"r{i}", PROMPTS[i % len(PROMPTS)], SamplingParams(max_tokens=5 + i, seed=i), on_event)
        finished.wait(30)
        results[f"r{i}"] = events
        done.wait(30)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    done.wait(30)
    assert sorted(results) == [f"r{i}" for i in range(6)]
    for events in results.values():
        assert events[-1].finished and events[-1].finish_reason in ("stop", "length")
        assert events[-1].completion_tokens == len(tokens(events))
    with pytest.raises(InvalidInput, match="temperature"):
        loop.submit("bad", "the", SamplingParams.from_dict({"temperature": -1}, 10), print)
    wait_for(lambda: loop.stats() == {"running": 0, "waiting": 0})


def test_closing_a_stream_early_cancels_its_request(loop):
    stream = loop.stream("s", PROMPTS[1], SamplingParams(max_tokens=200, ignore_eos=True), timeout=30)
    first = [next(stream), next(stream)]
    assert all(e.token_ids and not e.finished for e in first)
    stream.close()
    wait_for(lambda: not loop.engine.has_work)
    with loop.stream("t", "the", SamplingParams(max_tokens=3, ignore_eos=True)) as whole:
        events = list(whole)
    assert events[-1].finish_reason == "length" and len(tokens(events)) == 3  # delivered apart: maybe merged


def test_a_raising_consumer_cancels_only_its_request(loop):
    calls, good = [], []

    def broken(event: Event) -> None:
        calls.append(event)
        raise BrokenPipeError("client went away")

    loop.submit("broken", PROMPTS[1], SamplingParams(max_tokens=50, ignore_eos=True), broken)
    loop.submit("good", PROMPTS[1], SamplingParams(max_tokens=20, ignore_eos=True), good.append)
    wait_for(lambda: good and good[-1].finished)
    assert len(calls) == 1 and good[-1].finish_reason == "length" and good[-1].completion_tokens == 20
    wait_for(lambda: not loop.engine.has_work)


def test_is_cancelled_is_polled_and_stop_ends_what_is_left(loop):
    seen: list[Event] = []
    loop.submit("polled", "the", SamplingParams(max_tokens=100, ignore_eos=True), seen.append, lambda: len(seen) >= 3)
    wait_for(lambda: seen and seen[-1].finished)
    assert seen[-1].finish_reason == "cancelled" and seen[-1].completion_tokens < 100
    left: list[Event] = []
    loop.submit("left", "the", SamplingParams(max_tokens=200, ignore_eos=True), left.append)
    wait_for(lambda: left)
    loop.stop()
    assert left[-1].finished and (left[-1].finish_reason, left[-1].error) == ("error", "server stopping")
    with pytest.raises(RuntimeError, match="stopping"):
        loop.submit("late", "the", SamplingParams(), print)


def test_admission_refuses_what_would_wait_too_long_and_says_when_to_come_back():
    admission = Admission(slots=2, max_wait_s=5.0)
    admission.check(running=2, waiting=50)  # no request has finished yet: no estimate, nothing refused
    admission.finished(2.0)
    admission.check(running=1, waiting=0, count=1)  # a free slot: no wait
    admission.check(running=2, waiting=4)  # (4 + 1) / 2 slots x 2 s = 5 s: not more than the bound
    with pytest.raises(Overloaded, match="retry after 2 s") as refused:
        admission.check(running=2, waiting=6)  # 7 / 2 x 2 s = 7 s
    assert refused.value.http_status == 429 and refused.value.retry_after_s == 2
    assert overloaded_from(refused.value.message).retry_after_s == 2  # as Triton relays it to the frontend
    assert overloaded_from("Request timeout expired") is None
    Admission(slots=2, max_wait_s=0).check(running=2, waiting=10_000)  # 0: no bound


def test_the_admission_mean_counts_a_requests_time_running_not_its_wait_before(lms, monkeypatch):
    model, tokenizer = lms["gpt2"]
    engine = Engine(model, tokenizer, max_running=1)
    clock = [0.0]
    monkeypatch.setattr(engine_module.time, "monotonic", lambda: clock[0])
    for rid in ("a", "b"):  # both arrive at 0; b waits for a's slot
        engine.add(rid, PROMPTS[0], SamplingParams(max_tokens=2, ignore_eos=True, **GREEDY))
    for now in range(4):  # a runs from 0 to 1, b from 2 to 3
        clock[0] = float(now)
        engine.step()
    assert not engine.has_work and engine.admission.mean_s == pytest.approx(1.0)  # from arrival, b's would be 3


def test_the_engine_refuses_a_request_once_its_queue_would_take_too_long(lms):
    model, tokenizer = lms["gpt2"]
    engine = Engine(model, tokenizer, max_running=1, max_queue_wait_s=1e-6)
    engine.admit()  # nothing has finished: no estimate
    run(engine, {"first": (PROMPTS[0], SamplingParams(max_tokens=2, **GREEDY))})  # now the mean duration is known
    engine.admit()  # the slot is free
    engine.add("running", PROMPTS[0], SamplingParams(max_tokens=50, **GREEDY))
    engine.step()
    with pytest.raises(Overloaded):
        engine.admit()  # it would wait behind "running"


def test_static_batching_admits_only_into_an_empty_batch_and_keeps_ended_rows_as_padding(lms):
    model, tokenizer = lms["llama"]
    engine = Engine(model, tokenizer, max_running=3, static=True)
    params = [SamplingParams(max_tokens=n, ignore_eos=True, **GREEDY) for n in MAX_TOKENS]
    requests = {str(i): (p, params[i]) for i, p in enumerate(PROMPTS)}
    for rid, (prompt, p) in requests.items():
        engine.add(rid, prompt, p)
    seen, step = [], 0
    while engine.has_work:
        events = engine.step()
        seen.append((engine.running, engine.waiting, {e.request_id for e in events}))
        step += 1
        assert step < 200
    # the first three (20, 7 and 13 tokens) hold the batch for 20 steps, the 7- and 13-token rows as padding
    assert all(running == 3 and waiting == 2 for running, waiting, _ in seen[:19])
    assert [ids for *_, ids in seen[7:19]] == [{"0", "2"}] * 6 + [{"0"}] * 6
    assert seen[19] == (0, 2, {"0"})  # the longest ends: the batch empties
    assert seen[20][:2] == (2, 0)  # then the two that waited join, together
    assert len(seen) == 20 + 25


def test_static_batching_answers_as_generate_does(lms):
    model, tokenizer = lms["gpt2"]
    engine = Engine(model, tokenizer, max_running=2, static=True)
    requests = {
        str(i): (p, SamplingParams(max_tokens=n, **GREEDY))
        for i, (p, n) in enumerate(zip(PROMPTS, MAX_TOKENS, strict=True))
    }
    assert_generate_answers(model, tokenizer, run(engine, requests, join_every=0))


def test_a_cancelled_row_of_a_static_batch_ends_once_and_the_batch_goes_on(lms):
    model, tokenizer = lms["qwen2"]
    engine = Engine(model, tokenizer, max_running=2, static=True)
    long = SamplingParams(max_tokens=6, ignore_eos=True, **GREEDY)
    for rid in ("a", "b"):
        engine.add(rid, PROMPTS[1], long)
    engine.step()
    engine.cancel("a")
    ends = [e for _ in range(10) for e in engine.step() if e.finished]
    assert [(e.request_id, e.finish_reason) for e in ends] == [("a", "cancelled"), ("b", "length")]
    assert not engine.has_work and engine.running == 0
    for rid in ("c", "d"):  # the server stops while a padding row is in the batch: only the live row ends
        engine.add(rid, PROMPTS[1], long)
    engine.step()
    engine.cancel("c")
    engine.step()
    assert [(e.request_id, e.finish_reason) for e in engine.abort_all("stopping")] == [("d", "error")]


def test_a_static_loop_waits_for_its_batch_to_fill(lms):
    model, tokenizer = lms["gpt2"]
    loop = EngineLoop(Engine(model, tokenizer, max_running=2, static=True, fill_wait_s=30))
    try:
        first = loop.stream("a", PROMPTS[0], SamplingParams(max_tokens=3, ignore_eos=True), timeout=60)
        time.sleep(0.3)
        assert loop.stats() == {"running": 0, "waiting": 1}  # held back for the second
        second = loop.stream("b", PROMPTS[1], SamplingParams(max_tokens=3, ignore_eos=True), timeout=60)
        assert [len(tokens(list(s))) for s in (first, second)] == [3, 3]
    finally:
        loop.stop()
