"""A language model on Triton refuses what would wait too long for a slot, at once, with 429 and Retry-After
(``serving.max_queue_wait_s``; handlers/generation/admission.py), through the OpenAI frontend and the official
``openai`` client; the others are answered, and the client's own retries then get through."""

from __future__ import annotations

import asyncio

import openai
import pytest

pytestmark = pytest.mark.models("busy_lm")  # one sequence at a time, a bound of 1 µs: any wait is refused
MESSAGES = [{"role": "user", "content": "the model serves"}]


def test_a_request_that_would_wait_too_long_is_refused_at_once_with_retry_after(frontend):
    plain = openai.OpenAI(base_url=frontend.base_url, api_key=frontend.key, max_retries=0)
    assert plain.chat.completions.create(model="busy_lm", messages=MESSAGES, max_tokens=4).choices  # a duration known

    async def burst():
        client = openai.AsyncOpenAI(base_url=frontend.base_url, api_key=frontend.key, max_retries=0)
        ask = lambda: client.chat.completions.create(model="busy_lm", messages=MESSAGES, max_tokens=32)  # noqa: E731
        return await asyncio.gather(*(ask() for _ in range(6)), return_exceptions=True)

    outcomes = asyncio.run(burst())
    refused = [o for o in outcomes if isinstance(o, openai.RateLimitError)]
    answered = [o for o in outcomes if not isinstance(o, Exception)]
    assert len(refused) + len(answered) == 6, outcomes  # nothing else: no 500, no hang
    assert refused and answered, outcomes
    assert int(refused[0].response.headers["retry-after"]) >= 1
    assert refused[0].body["code"] == "overloaded" and "max_queue_wait_s" in refused[0].body["message"]
    patient = openai.OpenAI(base_url=frontend.base_url, api_key=frontend.key, max_retries=5)
    assert patient.chat.completions.create(model="busy_lm", messages=MESSAGES, max_tokens=4).choices
