"""The OpenAI-compatible API's shared layer: what is parsed, what is refused (by name), how answers are shaped.

Both servers run this code (TorchServe's handler, the Triton frontend); tests/integration/test_openai_serving.py
drives them with the real ``openai`` client.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from handlers.generation.engine import Engine
from handlers.generation.openai_api import ModelCard, OpenAIError, error_body, parse
from handlers.generation.openai_reply import Reply
from handlers.generation.sampling import SamplingParams
from tests.fixtures.lm import BOS_TEMPLATES, CHAT_TEMPLATE
from tests.unit.lm_fixtures import tiny_lm

USER = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("openai")
    return {kind: tiny_lm(kind, root / kind) for kind in ("gpt2", "llama")}


@pytest.fixture(scope="module")
def cards(checkpoints) -> dict:
    cards = {}
    for kind, path in checkpoints.items():
        tokenizer = AutoTokenizer.from_pretrained(path)
        tokenizer.chat_template = BOS_TEMPLATES.get(kind, CHAT_TEMPLATE)
        cards[kind] = ModelCard("m", tokenizer, max_context=64, max_tokens_limit=32)
    return cards


def test_a_completion_request_becomes_one_choice_per_prompt_and_n(cards):
    request = parse("completions", {"model": "m", "prompt": ["a b", "c"], "n": 2, "seed": 7, "max_tokens": 5,
                                    "temperature": 0.5, "stop": "\n"}, cards["gpt2"])  # fmt: skip
    assert [c.prompt for c in request.choices] == ["a b", "a b", "c", "c"]
    assert [c.params.seed for c in request.choices] == [7, 8, 7, 8]  # choice i seeded seed+i: they differ
    assert all(c.params.max_tokens == 5 and c.params.stop == ("\n",) for c in request.choices)
    assert not request.chat and request.n == 2
    assert parse("completions", {"model": "m", "prompt": "a"}, cards["gpt2"]).choices[0].params.max_tokens == 16


def test_chat_messages_go_through_the_template_with_one_bos(cards):
    parts = [{"type": "text", "text": "hi"}]
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": parts}]
    for kind, card in cards.items():
        prompt = parse("chat/completions", {"model": "m", "messages": messages}, card).choices[0].prompt
        assert prompt.endswith("<|system|>\nbe brief\n<|user|>\nhi\n<|assistant|>\n")
        ids = card.tokenizer(prompt)["input_ids"]
        assert ids.count(card.tokenizer.bos_token_id) == (1 if kind == "llama" else 0), kind
        # with no max_tokens, chat gets the room left in the context (at most the configured limit)
        params = parse("chat/completions", {"model": "m", "messages": messages}, card).choices[0].params
        assert params.max_tokens == min(32, 64 - len(ids))


@pytest.mark.parametrize(
    "route, body, param, status",
    [
        ("completions", {"prompt": "a", "presence_penalty": 0.5}, "presence_penalty", 400),
        ("completions", {"prompt": "a", "logit_bias": {"1": 5}}, "logit_bias", 400),
        ("completions", {"prompt": "a", "frobnicate": 1}, "frobnicate", 400),
        ("completions", {"prompt": [1, 2]}, "prompt", 400),
        ("completions", {"prompt": ""}, "prompt", 400),
        ("completions", {"prompt": "a", "n": 17}, "n", 400),
        ("completions", {"prompt": "a", "logprobs": 6}, "logprobs", 400),
        ("completions", {"prompt": "a", "echo": True, "logprobs": 1}, "echo", 400),
        ("completions", {"prompt": "a", "stream_options": {"include_usage": True}}, "stream_options", 400),
        ("completions", {"prompt": "a", "max_tokens": 33}, "max_tokens", 400),
        ("completions", {"prompt": "a", "temperature": -1}, "temperature", 400),
        ("completions", {"prompt": "x " * 20, "max_tokens": 30}, "max_tokens", 400),
        ("completions", {"prompt": "a", "best_of": 3}, "best_of", 400),
        ("chat/completions", {"messages": []}, "messages", 400),
        ("chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, "messages[0]", 400),
        (
            "chat/completions",
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages[0].content",
            400,
        ),  # fmt: skip
        ("chat/completions", {"messages": USER, "tools": [{"type": "function"}]}, "tools", 400),
        ("chat/completions", {"messages": USER, "response_format": {"type": "json_object"}}, "response_format", 400),
        ("chat/completions", {"messages": USER, "top_logprobs": 2}, "top_logprobs", 400),
        ("chat/completions", {"messages": [{"role": "user", "content": "x " * 80}]}, "messages", 400),
        ("embeddings", {"input": "a"}, None, 404),
    ],
)
def test_what_is_not_supported_is_refused_by_name(cards, route, body, param, status):
    with pytest.raises(OpenAIError) as refused:
        parse(route, {"model": "m", **body}, cards["gpt2"])
    assert refused.value.http_status == status and refused.value.param == param
    error = error_body(refused.value)["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"


def test_an_unknown_model_is_a_404_naming_the_served_one(cards):
    with pytest.raises(OpenAIError) as refused:
        parse("completions", {"model": "gpt-4", "prompt": "a"}, cards["gpt2"])
    assert refused.value.http_status == 404 and refused.value.code == "model_not_found"
    assert "'gpt-4'" in refused.value.message and refused.value.message.endswith("served here: m")


def answers(texts: list[str], reason: str = "stop") -> list[dict]:
    """A choice's answers in the LLM-backend contract, streamed: deltas, then the last with usage."""
    last = {"text_output": texts[-1], "finish_reason": reason, "usage": {"prompt_tokens": 3,
                                                                         "completion_tokens": len(texts)}}  # fmt: skip
    return [{"text_output": t, "finish_reason": None} for t in texts[:-1]] + [last]


def test_a_streamed_chat_sends_the_role_then_deltas_then_the_reason_then_usage(cards):
    request = parse("chat/completions", {"model": "m", "messages": USER, "n": 2, "stream": True,
                                         "stream_options": {"include_usage": True}}, cards["gpt2"])  # fmt: skip
    reply, chunks = Reply(request), []
    streams = {0: answers(["Hel", "lo", ""]), 1: answers(["Hi"], "length")}
    for step in range(3):  # the two choices' answers interleaved, as the engine steps them
        for index, stream in streams.items():
            if step < len(stream):
                chunks += reply.add(index, stream[step])
    assert reply.done
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
    for index, text, reason in [(0, "Hello", "stop"), (1, "Hi", "length")]:
        mine = [c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["index"] == index]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        assert "".join(c["delta"].get("content", "") for c in mine) == text
        assert [c["finish_reason"] for c in mine] == [None] * (len(mine) - 1) + [reason]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 4,
                                                                   "total_tokens": 7}  # fmt: skip
    assert all(c["usage"] is None for c in chunks[:-1])


def test_a_whole_completion_gathers_text_echo_and_usage(cards):
    request = parse("completions", {"model": "m", "prompt": ["a", "b"], "echo": True}, cards["gpt2"])
    reply = Reply(request)
    assert reply.add(1, answers([" x", " y"])[0]) == []  # nothing is streamed
    for index, stream in enumerate([answers([" p"]), answers([" y"])]):
        for answer in stream:
            reply.add(index, answer)
    whole = reply.whole()
    assert whole["object"] == "text_completion" and [c["text"] for c in whole["choices"]] == ["a p", "b x y"]
    assert whole["usage"] == {"prompt_tokens": 6, "completion_tokens": 2, "total_tokens": 8}  # one prompt each


def test_logprobs_are_the_models_own_and_shaped_for_each_api(checkpoints, cards):
    """The engine reports log softmax of the logits it sampled from: the chosen token's and the top ones'."""
    model = AutoModelForCausalLM.from_pretrained(checkpoints["gpt2"])
    tokenizer = cards["gpt2"].tokenizer
    engine = Engine(model, tokenizer, max_running=2)
    engine.add("r", "the model", SamplingParams(max_tokens=3, temperature=0, logprobs=2))
    events = [e for _ in range(3) for e in engine.step()]
    entries = [entry for e in events for entry in e.logprobs or []]
    assert len(entries) == 3
    ids = tokenizer("the model")["input_ids"]
    with torch.inference_mode():
        first = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), -1)
    assert math.isclose(entries[0]["logprob"], float(first.max()), abs_tol=1e-4)  # greedy: the top token
    for entry in entries:
        top = entry["top_logprobs"]
        assert len(top) == 2 and top[0]["logprob"] >= top[1]["logprob"] and top[0]["token"] == entry["token"]
        assert entry["bytes"] == list(entry["token"].encode())
    request = parse("completions", {"model": "m", "prompt": "the model", "logprobs": 2}, cards["gpt2"])
    reply = Reply(request)
    reply.add(0, {"text_output": "ab", "finish_reason": "length", "usage": {"prompt_tokens": 2,
                  "completion_tokens": 3}, "logprobs": entries})  # fmt: skip
    legacy = reply.whole()["choices"][0]["logprobs"]
    assert legacy["tokens"] == [e["token"] for e in entries] and len(legacy["top_logprobs"]) == 3
    assert legacy["text_offset"][0] == 0 and legacy["text_offset"][1] == len(entries[0]["token"])
