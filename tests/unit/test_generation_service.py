"""The language-model service: the request contract both servers share, and the load-time self-check."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from handlers.artifact import read_manifest, write_artifact_manifest
from handlers.errors import InvalidInput
from handlers.generation.service import GenerationService, answer
from handlers.self_check import SelfCheckFailed
from scripts.training.lm_artifact import write_lm_artifact
from tests.unit.lm_fixtures import tiny_lm


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    source = tiny_lm("gpt2", root / "checkpoint")
    model, tokenizer = AutoModelForCausalLM.from_pretrained(source), AutoTokenizer.from_pretrained(source)
    write_lm_artifact(root / "tiny", model, tokenizer, "tiny", ["the model", "café naïve über"], {}, max_tokens=8)
    return root / "tiny"


@pytest.fixture(scope="module")
def service(artifact):
    return GenerationService(artifact)


def test_a_request_reads_the_same_from_fields_parameters_and_a_json_string(service):
    whole = service.parse(b'{"text_input": "the model", "sampling_parameters": "{\\"max_tokens\\": 4}", "seed": 3}')
    assert whole.prompt == "the model" and whole.params.max_tokens == 4 and whole.params.seed == 3
    assert not whole.stream and not whole.exclude_input
    streamed = service.parse({"text_input": "the model", "stream": True, "sampling_parameters": {"max_tokens": 9},
                              "max_tokens": 2})  # fmt: skip
    assert streamed.stream and streamed.params.max_tokens == 2  # a top-level field wins over sampling_parameters
    assert answer(whole, " more", "length", 3, 4)["text_output"] == "the model more"  # a whole answer: prompt first
    assert answer(streamed, " more", "length", 3, 4)["text_output"] == " more"  # a stream never repeats it


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\xff\xfe", "not UTF-8"),
        (b"{not json", "not JSON"),
        ([1, 2], "must be a JSON object"),
        ({"text_input": "hi", "stream": "yes"}, "stream must be true or false"),
        ({"text_input": "hi", "sampling_parameters": 5}, "sampling_parameters must be an object"),
        ({"text_input": "hi", "max_tokens": 256}, "max_tokens must be at most"),
        ({"text_input": "hi " * 200, "max_tokens": 100}, "this model's context is"),
        ({"prompt": "hi"}, "unknown field prompt"),
    ],
)
def test_bad_requests_name_what_is_wrong(service, body, message):
    with pytest.raises(InvalidInput, match=message):
        service.parse(body)


def rewrite_record(artifact, change) -> None:
    path = artifact / "held_out.jsonl"
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    change(records[0])
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    write_artifact_manifest(artifact, read_manifest(artifact, verify=False))


def test_the_self_check_refuses_a_model_that_generates_otherwise(artifact, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(artifact, copy)

    def tamper(record, margin):
        record["token_ids"][2] = (record["token_ids"][2] + 1) % 100
        record["margins"][2] = margin

    rewrite_record(copy, lambda r: tamper(r, 0.5))  # a clear pick recorded: a real difference
    with pytest.raises(SelfCheckFailed, match="differs from the recorded one at token 2"):
        GenerationService(copy)
    rewrite_record(copy, lambda r: tamper(r, 1e-5))  # a near tie recorded: another CPU may pick either
    GenerationService(copy)
