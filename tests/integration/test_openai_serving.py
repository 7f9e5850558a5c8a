"""The OpenAI-compatible API on the real servers, driven by the official ``openai`` client and by ``curl -N``.

TorchServe answers at ``/predictions/<model>/1.0/v1`` (its handler), Triton through the frontend in front of its
gRPC (``scripts/serving/openai_frontend.py``). Greedy answers equal the engine's in process; requests that could
share a batch use prompts whose greedy picks keep clear of near ties (``stable_prompts``).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess

import httpx
import openai
import pytest

from handlers.generation.openai_api import ModelCard, parse
from handlers.generation.sampling import SamplingParams
from handlers.generation.service import GenerationService
from tests.fixtures.lm import KINDS, stable_prompts
from tests.integration.test_generation_serving import metric, wait_for

pytestmark = pytest.mark.models(*(f"lm_{kind}" for kind in KINDS))
SERVERS = ("torchserve", "triton")
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the model serves"}]


@pytest.fixture(scope="module")
def bases(torchserve, frontend) -> dict:
    """server -> (base URL of model ``lm_<kind>``'s API, given the kind; its key)."""
    on_torchserve = lambda kind: f"{torchserve.inference_url}/predictions/lm_{kind}/1.0/v1"  # noqa: E731
    return {"torchserve": (on_torchserve, torchserve.inference_key), "triton": (lambda kind: frontend.base_url,
                                                                              frontend.key)}  # fmt: skip


def client(bases, server: str, kind: str, asynchronous: bool = False):
    url, key = bases[server]
    return (openai.AsyncOpenAI if asynchronous else openai.OpenAI)(base_url=url(kind), api_key=key, max_retries=0)


@pytest.fixture(scope="module")
def services(lm_artifacts) -> dict:
    return {kind: GenerationService(artifact, self_check=False) for kind, artifact in lm_artifacts.items()}


def in_process(service: GenerationService, prompt: str, max_tokens: int) -> tuple[str, list[int], str]:
    return service.engine.generate(prompt, SamplingParams(max_tokens=max_tokens, temperature=0))


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("kind", KINDS)
def test_chat_streamed_and_whole_equal_the_engine_with_the_tokenizers_counts(bases, services, server, kind):
    service = services[kind]
    engine = service.engine
    card = ModelCard(f"lm_{kind}", engine.tokenizer, engine.max_context, service.max_tokens_limit)
    body = {"model": f"lm_{kind}", "messages": MESSAGES, "max_tokens": 12, "temperature": 0}
    prompt = parse("chat/completions", body, card).choices[0].prompt
    text, ids, reason = in_process(service, prompt, 12)
    api = client(bases, server, kind)
    whole = api.chat.completions.create(**body)
    chunks = list(api.chat.completions.create(**body, stream=True, stream_options={"include_usage": True}))
    assert whole.choices[0].message.content == text and whole.choices[0].finish_reason == reason
    assert whole.object == "chat.completion" and whole.choices[0].message.role == "assistant"
    assert whole.usage.prompt_tokens == len(engine.tokenizer(prompt)["input_ids"])
    assert whole.usage.completion_tokens == len(ids)
    deltas = [c.choices[0] for c in chunks if c.choices]
    assert deltas[0].delta.role == "assistant" and "".join(d.delta.content or "" for d in deltas) == text
    assert [d.finish_reason for d in deltas][-1] == reason and all(d.finish_reason is None for d in deltas[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == whole.usage.model_dump()


@pytest.mark.parametrize("server", SERVERS)
def test_concurrent_async_completions_equal_the_engine(bases, services, lm_artifacts, server):
    """The async client, streamed and not, every stable prompt at once: they share the running batch."""
    prompts = stable_prompts(lm_artifacts["gpt2"])
    expected = [in_process(services["gpt2"], p, 10)[0] for p in prompts]
    api = client(bases, server, "gpt2", asynchronous=True)

    async def whole(prompt):
        answer = await api.completions.create(model="lm_gpt2", prompt=prompt, max_tokens=10, temperature=0)
        return answer.choices[0].text

    async def streamed(prompt):
        stream = await api.completions.create(model="lm_gpt2", prompt=prompt, max_tokens=10, temperature=0,
                                              stream=True)  # fmt: skip
        return "".join([chunk.choices[0].text async for chunk in stream])

    async def everything():
        async with api:
            return await asyncio.gather(*[f(p) for p in prompts for f in (whole, streamed)])

    texts = asyncio.run(everything())
    assert texts == [t for t in expected for _ in range(2)]


def test_seeded_samples_logprobs_and_echo_are_the_same_on_both_servers(bases):
    """n=2 seeded choices (each its own seed), log-probabilities, one after the other: the servers agree."""
    answers = {}
    for server in SERVERS:
        api = client(bases, server, "gpt2")
        chat = api.chat.completions.create(model="lm_gpt2", messages=MESSAGES, max_tokens=8, n=2, seed=11,
                                           temperature=1.0, logprobs=True, top_logprobs=3)  # fmt: skip
        legacy = api.completions.create(model="lm_gpt2", prompt="the model", max_tokens=4, temperature=0, echo=True)
        answers[server] = chat, legacy
    (ts_chat, ts_legacy), (tr_chat, tr_legacy) = answers["torchserve"], answers["triton"]
    assert [c.message.content for c in ts_chat.choices] == [c.message.content for c in tr_chat.choices]
    assert [c.index for c in ts_chat.choices] == [0, 1]
    for ts_choice, tr_choice in zip(ts_chat.choices, tr_chat.choices, strict=True):
        ts_entries, tr_entries = ts_choice.logprobs.content, tr_choice.logprobs.content
        assert len(ts_entries) == len(tr_entries) > 0
        for a, b in zip(ts_entries, tr_entries, strict=True):
            assert a.token == b.token and abs(a.logprob - b.logprob) < 1e-4 and a.logprob <= 0
            assert len(a.top_logprobs) == 3 and a.top_logprobs[0].logprob >= a.logprob
    assert ts_chat.usage.completion_tokens == sum(len(c.logprobs.content) for c in ts_chat.choices)
    assert ts_legacy.choices[0].text == tr_legacy.choices[0].text and ts_legacy.choices[0].text.startswith("the model")


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize("server", SERVERS)
def test_curl_reads_server_sent_events_ending_with_done(bases, services, server):
    url, key = bases[server]
    body = {"model": "lm_gpt2", "prompt": "the model", "max_tokens": 6, "temperature": 0, "stream": True}
    command = ["curl", "-sN", f"{url('gpt2')}/completions", "-H", f"Authorization: Bearer {key}",
               "-H", "Content-Type: application/json", "-d", json.dumps(body)]  # fmt: skip
    lines = [line for line in subprocess.run(command, capture_output=True, text=True, timeout=60).stdout.split("\n\n")
             if line]  # fmt: skip
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[len("data: ") :]) for line in lines[:-1]]
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert "".join(c["choices"][0]["text"] for c in chunks) == in_process(services["gpt2"], "the model", 6)[0]


@pytest.mark.parametrize("server", SERVERS)
def test_refusals_are_openai_errors_and_the_server_goes_on(bases, server):
    api = client(bases, server, "gpt2")
    with pytest.raises(openai.BadRequestError) as refused:
        api.chat.completions.create(model="lm_gpt2", messages=MESSAGES, frequency_penalty=1.0)
    assert refused.value.body["param"] == "frequency_penalty" and "not supported" in refused.value.body["message"]
    with pytest.raises(openai.BadRequestError) as refused:
        api.completions.create(model="lm_gpt2", prompt="the model " * 200, max_tokens=4)
    assert refused.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError):
        api.completions.create(model="gpt-4o", prompt="x")
    url, _ = bases[server]
    # TorchServe's own token check answers a wrong key with 400 before any handler runs; the frontend with 401
    wrong_key = openai.BadRequestError if server == "torchserve" else openai.AuthenticationError
    with pytest.raises(wrong_key, match="Token Authorization failed|valid API key"):
        openai.OpenAI(base_url=url("gpt2"), api_key="wrong", max_retries=0).models.list()
    listed = [m.id for m in api.models.list()]  # the frontend lists every language model of the repository
    assert listed == ["lm_gpt2"] if server == "torchserve" else {"lm_gpt2", "lm_llama"} <= set(listed)
    assert api.completions.create(model="lm_gpt2", prompt="hi", max_tokens=2).usage.completion_tokens <= 2


def test_a_client_leaving_the_frontend_cancels_its_triton_request(frontend, triton):
    scrape = lambda: httpx.get(f"http://127.0.0.1:{triton.metrics}/metrics", timeout=10).text  # noqa: E731
    reason = {"model": "lm_gpt2", "finished_reason": "cancelled"}
    before = metric(scrape(), "maas_request_finished_total", **reason)
    body = {
        "model": "lm_gpt2",
        "prompt": "the model",
        "max_tokens": 200,
        "temperature": 0,
        "stream": True,
        "ignore_eos": True,
    }
    headers = {"Authorization": f"Bearer {frontend.key}"}
    with httpx.stream("POST", f"{frontend.base_url}/completions", json=body, headers=headers, timeout=60) as response:
        assert response.status_code == 200
        assert next(response.iter_lines()).startswith("data: ")
    wait_for(lambda: metric(scrape(), "maas_request_finished_total", **reason) == before + 1)
    wait_for(lambda: metric(scrape(), "maas_num_requests_running", model="lm_gpt2") == 0)
