"""``maas bench generate``: its workload, figures, targets and tables, and a run of the in-process modes on a tiny
random model (no servers)."""

from __future__ import annotations

import asyncio
import json
import os

import httpx
import numpy as np
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from scripts.benchmarking import generate_bench, generate_report
from scripts.benchmarking.generate_load import (
    MIN_OUTPUT,
    Chunk,
    Request,
    RequestResult,
    http_stream,
    make_workload,
    measure,
    percentile,
    summarize,
)  # fmt: skip
from scripts.benchmarking.generate_report import check_targets
from scripts.training.lm_artifact import write_lm_artifact
from tests.unit.lm_fixtures import tiny_lm, tiny_tokenizer

HELD_OUT = ["the model", "café naïve über", "the engine batches requests step by step and", "日本語 東京"]
TEXT = " ".join(HELD_OUT * 20)


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def workload(tokenizer, **overrides) -> list[Request]:
    options = {"n": 200, "mean_output": 20.0, "max_output": 60, "max_context": 256, "max_tokens_limit": 255,
               "seed": 0} | overrides  # fmt: skip
    return make_workload(tokenizer, HELD_OUT, TEXT, **options)


def test_the_workload_is_seeded_and_mixes_recorded_prompts_with_snippets(tokenizer):
    requests = workload(tokenizer)
    assert requests == workload(tokenizer)  # every mode gets the same one
    assert requests != workload(tokenizer, seed=1)
    assert workload(tokenizer, n=50) == requests[:50]  # a level of N requests takes the first N
    sources = {r.source for r in requests}
    assert sources == {"held_out", "snippet"}
    assert all(r.prompt in HELD_OUT for r in requests if r.source == "held_out")
    snippets = [r.prompt_tokens for r in requests if r.source == "snippet"]
    assert min(snippets) < 16 < 40 < max(snippets)  # of varied length
    assert all(r.prompt_tokens == len(tokenizer(r.prompt)["input_ids"]) for r in requests)


def test_output_lengths_are_exponential_and_within_bounds(tokenizer):
    requests = workload(tokenizer, n=2000, mean_output=20.0, max_output=1000)
    lengths = np.array([r.output_tokens for r in requests])
    assert lengths.min() >= MIN_OUTPUT and lengths.max() <= 255
    assert 17 < lengths.mean() < 24  # exponential(20) with the few below 4 raised to 4
    assert np.median(lengths) < lengths.mean()  # skewed right, as an exponential is
    clipped = workload(tokenizer, max_output=10)
    assert all(MIN_OUTPUT <= r.output_tokens <= 10 for r in clipped)
    tight = workload(tokenizer, max_context=40, max_output=200)  # the context bounds prompt + output
    assert all(r.prompt_tokens + r.output_tokens <= 40 for r in tight)


def test_percentiles_and_a_level_summary():
    assert percentile([], 50) is None
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile(list(range(101)), 99) == pytest.approx(99.0)
    results = [
        RequestResult(10, ttft_s=0.1, latency_s=1.0, gaps_s=[0.1] * 9, completion_tokens=10),
        RequestResult(20, ttft_s=0.3, latency_s=2.2, gaps_s=[0.1] * 19, completion_tokens=20),
        RequestResult(30, error="timed out after 1 s"),
    ]
    s = summarize(results, wall_s=2.0)
    assert (s["requests"], s["completed"], s["errors"], s["output_tokens"]) == (3, 2, 1, 30)
    assert s["tokens_per_s"] == 15.0 and s["requests_per_s"] == 1.0  # planned tokens of completed ones only
    assert s["ttft_p50_ms"] == pytest.approx(200.0) and s["itl_p50_ms"] == pytest.approx(100.0)
    assert s["tpot_p50_ms"] == pytest.approx(100.0)
    assert s["tokens_match"] and s["first_error"] == "timed out after 1 s"
    assert not summarize([RequestResult(5, 0.1, 0.5, [], completion_tokens=4)], 1.0)["tokens_match"]


def test_a_request_is_timed_from_its_chunks_and_bounded_by_its_timeout():
    async def stream(request):
        for text in ["", "a", "", "b"]:  # empty chunks count for nothing
            await asyncio.sleep(0.01)
            yield Chunk(text)
        yield Chunk("", completion_tokens=request.output_tokens)

    async def stuck(request):
        yield Chunk("a")
        await asyncio.sleep(60)

    request = Request("hi", 1, 5, "held_out")
    result = asyncio.run(measure(stream, request, timeout=5))
    assert result.error is None and result.completion_tokens == 5
    assert 0.015 < result.ttft_s < result.latency_s and len(result.gaps_s) == 1 and result.gaps_s[0] > 0.015
    result = asyncio.run(measure(stuck, request, timeout=0.1))
    assert result.error == "timed out after 0.1 s"


STREAMS = {
    "torchserve": b'{"text_output": "a", "finish_reason": null}\n{"text_output": "", "finish_reason": null}\n'
    b'{"text_output": "b", "finish_reason": "length", "usage": {"prompt_tokens": 1, "completion_tokens": 5}}\n',
    "triton": b'data: {"text_output": "a", "finish_reason": "", "completion_tokens": 1}\n\n'
    b'data: {"text_output": "b", "finish_reason": "length", "completion_tokens": 5}\n\n',
}


@pytest.mark.parametrize("kind", STREAMS)
def test_each_servers_stream_is_read_and_a_refusal_is_an_error(kind):
    sent = []

    def server(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(200 if len(sent) == 1 else 400, content=STREAMS[kind] if len(sent) == 1 else b"no")

    async def two_requests():
        async with httpx.AsyncClient(transport=httpx.MockTransport(server)) as client:
            stream = http_stream(kind, client, "http://127.0.0.1/generate")
            return [await measure(stream, Request("hi", 1, 5, "held_out"), timeout=5) for _ in range(2)]

    ok, refused = asyncio.run(two_requests())
    assert ok.error is None and ok.completion_tokens == 5 and len(ok.gaps_s) == 1
    assert refused.error == "RequestFailed: HTTP 400: b'no'"
    assert sent[0] == {"text_input": "hi", "stream": True, "exclude_input_in_output": True, "max_tokens": 5,
                       "temperature": 0, "ignore_eos": True}  # fmt: skip


def point(c: int, tokens_per_s: float, ttft: float, itl: float | None) -> dict:
    return {"concurrency": c, "tokens_per_s": tokens_per_s, "ttft_p50_ms": ttft, "itl_p50_ms": itl}


MODES = {
    "in-process": [point(1, 100, 10, 5), point(16, 1000, 20, 6)],
    "naive": [point(1, 100, 10, 5), point(16, 100, 500, 5)],
    "static": [point(1, 100, 50, None), point(16, 500, 800, None)],
    "torchserve": [point(1, 90, 12, 6), point(16, 900, 30, 10)],  # meets every target
    "triton": [point(1, 90, 10, 6), point(16, 700, 40, 11)],  # misses five
    # the same servers' baselines, at the target level only
    "torchserve-naive": [point(16, 200, 900, 5)],
    "torchserve-static": [point(16, 400, 300, 6)],
    "triton-naive": [point(16, 250, 900, 5)],
    "triton-static": [point(16, 500, 300, 6)],
}


def test_targets_are_read_at_16_and_say_met_or_not():
    targets = {(t["mode"], t["target"]): t for t in check_targets(MODES)}
    assert len(targets) == 14 and {t["concurrency"] for t in targets.values()} == {16}
    assert all(t["met"] for (mode, _), t in targets.items() if mode == "torchserve")
    met = {name: t["met"] for (mode, name), t in targets.items() if mode == "triton"}
    assert met == {"tokens/s at c=16 vs naive on triton": False, "tokens/s at c=16 vs static on triton": False,
                   "tokens/s at c=16 vs naive in process": True, "tokens/s at c=16 vs static in process": False,
                   "tokens/s at c=16 vs in-process": False, "TTFT p50 at c=16 vs c=1": False,
                   "ITL p50 at c=16 vs in-process": True}  # fmt: skip
    assert targets["triton", "tokens/s at c=16 vs naive on triton"]["detail"] == "700.00 vs 250.00 tok/s"
    ttft = targets["triton", "TTFT p50 at c=16 vs c=1"]
    assert ttft["measured"] == 4.0 and ttft["goal"] == "<= 3x" and ttft["detail"] == "40.00 vs 10.00 ms"


def test_targets_fall_back_to_the_highest_level_and_to_not_measurable():
    modes = {m: [p for p in points if p["concurrency"] == 1] for m, points in MODES.items()}
    modes["torchserve"].append(point(4, 300, 15, 7))
    targets = [t for t in check_targets(modes) if t["mode"] == "torchserve"]
    assert {t["concurrency"] for t in targets} == {4}
    assert all(t["met"] is None for t in targets if t["target"] != "TTFT p50 at c=4 vs c=1")  # nothing at c=4
    assert check_targets({"in-process": MODES["in-process"]}) == []  # no server: nothing to check


def test_the_markdown_tables():
    full = {m: [p | {"requests": 16, "errors": 0, "requests_per_s": 1.0, "ttft_p99_ms": 1.0, "itl_p99_ms": None,
                     "tpot_p50_ms": 2.0, "tokens_match": True, "process_cpu_pct": 12.0} for p in points]
            for m, points in MODES.items()}  # fmt: skip
    levels = generate_report.levels_table(full).splitlines()
    assert levels[0].startswith("| mode | c | requests | errors | output tok/s |") and len(levels) == 2 + 14
    assert levels[2].startswith("| in-process | 1 | 16 | 0 | 100.0 |")
    assert "| torchserve | 16 |" in levels[9] and levels[9].endswith("| yes | 12 | - |")
    assert "| triton-static | 16 |" in levels[15] and levels[15].endswith("| yes | 12 | - |")  # served: client CPU
    targets = generate_report.targets_table(check_targets(full))
    assert targets.count("**met**") == 9 and targets.count("**not met**") == 5
    assert "--servers none" in generate_report.targets_table([])


def test_the_in_process_modes_on_a_tiny_model(tmp_path):
    source = tiny_lm("gpt2", tmp_path / "checkpoint")
    model, tokenizer = AutoModelForCausalLM.from_pretrained(source), AutoTokenizer.from_pretrained(source)
    write_lm_artifact(tmp_path / "lm", model, tokenizer, "lm", HELD_OUT[:3], {}, max_tokens=8)
    argv = [str(tmp_path / "lm"), "--servers", "none", "--concurrency", "1,2", "--requests", "4", "--max-output",
            "8", "--out", str(tmp_path / "reports")]  # fmt: skip
    assert generate_bench.main(argv) == 0
    result = json.loads((tmp_path / "reports" / "generate.json").read_text())
    planned = [r["output_tokens"] for r in result["workload"]["requests"]]
    assert len(planned) == 4 and all(MIN_OUTPUT <= n <= 8 for n in planned)
    assert list(result["modes"]) == ["in-process", "naive", "static", "in-process-served"]
    assert result["meta"]["served_threads"] == max(1, len(os.sched_getaffinity(0)) - 1)
    for mode, points in result["modes"].items():
        assert [p["concurrency"] for p in points] == [1, 2], mode
        for p in points:
            assert p["errors"] == 0 and p["tokens_match"] and p["output_tokens"] == sum(planned), (mode, p)
            assert [r["completion_tokens"] for r in p["raw"]] == planned, mode
    assert result["targets"] == [] and len(result["meta"]["load_average_start"]) == 3
    assert (tmp_path / "reports" / "generate.png").stat().st_size > 0
    assert "| static | 2 | 4 | 0 |" in (tmp_path / "reports" / "generate.md").read_text()
