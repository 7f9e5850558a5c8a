"""``maas train lm`` and ``maas import hf`` of causal LMs: the artifact loads with transformers, and its recorded greedy
continuations are what the saved model generates."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, LlamaConfig, ViTConfig

from handlers.artifact import HELD_OUT_NAME, read_manifest
from scripts.cli import DEBUG_ENV
from scripts.cli import main as maas
from scripts.training.import_hf import detect_task
from scripts.training.import_hf_lm import BUILTIN_PROMPTS
from scripts.training.lm_corpus import (
    CHAT_TEMPLATE,
    STDLIB_MODULES,
    CorpusError,
    chat_document,
    file_documents,
    stdlib_documents,
)
from scripts.training.train_lm import fixed_length, timed_length
from tests.unit.lm_fixtures import tiny_lm, tiny_tokenizer

TEXT = (
    "the parser reads each line of the file and returns a list of values ; when the caller asks for more rows "
    "the reader opens the next file , and an error names the path that failed"
)


@pytest.fixture
def corpus(tmp_path):
    """Sixty short paragraphs of seeded word salad: enough for the tiny model to hold three out."""
    rng, words = torch.Generator().manual_seed(0), TEXT.split()
    paragraphs = [" ".join(words[i] for i in torch.randint(len(words), (int(n),), generator=rng))
                  for n in torch.randint(8, 40, (60,), generator=rng)]  # fmt: skip
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def cli(monkeypatch):
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # maas names each command's program in sys.argv[0]
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    return maas


def records_of(artifact) -> list[dict]:
    return [json.loads(line) for line in (artifact / HELD_OUT_NAME).read_text(encoding="utf-8").splitlines()]


def assert_records_replay(artifact) -> tuple:
    """Each recorded continuation is the loaded model's own greedy one, with a margin per step it took."""
    model = AutoModelForCausalLM.from_pretrained(artifact / "model", dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(artifact / "model")
    records = records_of(artifact)
    assert records
    for record in records:
        spec = record["input"]
        assert spec["temperature"] == 0 and spec["max_tokens"] >= 1
        encoded = tokenizer(spec["prompt"], return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**encoded, do_sample=False, max_new_tokens=spec["max_tokens"],
                                 pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)  # fmt: skip
        new = out[0, encoded["input_ids"].shape[1] :].tolist()
        ended = new[-1] == tokenizer.eos_token_id and len(new) <= spec["max_tokens"]
        assert record["token_ids"] == (new[:-1] if ended else new)
        assert record["target"] == tokenizer.decode(record["token_ids"], skip_special_tokens=True)
        assert len(record["margins"]) == len(new) and all(m >= 0 and math.isfinite(m) for m in record["margins"])
    return model, tokenizer


def test_train_lm_writes_an_artifact_whose_greedy_records_replay(corpus, tmp_path, cli, capsys):
    out = tmp_path / "lm"
    assert cli(["train", "lm", "--corpus", str(corpus), "--out", str(out), "--size", "tiny", "--steps", "4"]) == 0
    printed = capsys.readouterr().out
    assert "held-out perplexity" in printed and "sample (greedy):" in printed
    manifest = read_manifest(out)  # every file's checksum, model/ included
    assert manifest.task == "text_generation" and manifest.name == "lm" and manifest.labels is None
    assert manifest.model == {"format": "hf_causal_lm", "dir": "model", "architecture": "gpt2", "max_context": 32}
    assert manifest.serving.max_batch_size == 16 and manifest.serving.max_tokens_limit == 31
    assert {name for name in manifest.files if name.startswith("model/")} >= {"model/model.safetensors",
                                                                              "model/config.json"}  # fmt: skip
    metrics = manifest.metrics
    assert math.isfinite(metrics["held_out_perplexity"]) and metrics["held_out_perplexity"] > 1
    assert metrics["steps"] == 4 and metrics["held_out_tokens"] > 0 and metrics["train_tokens"] > 0
    assert metrics["corpus"] == str(corpus) and metrics["documents"] == {"train": 57, "held_out": 3}
    assert {"train_loss", "seconds", "parameters", "seed"} <= set(metrics)
    prompts = [record["input"]["prompt"] for record in records_of(out)]
    assert len(prompts) == 3 and all(1 <= len(p.split()) <= 8 for p in prompts)  # the held-out documents' starts

    _, tokenizer = assert_records_replay(out)
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                         add_generation_prompt=True)  # fmt: skip
    assert chat == "<|user|>\nhi\n<|assistant|>\n"
    assert tokenizer.eos_token == tokenizer.pad_token == tokenizer.bos_token == "<|endoftext|>"


def test_a_timed_run_is_repeated_by_its_step_count(corpus, tmp_path, cli):
    """--minutes times the first (warm-up) steps to fix the length; --steps with that length gives the same model."""
    common = ["train", "lm", "--corpus", str(corpus), "--size", "tiny"]
    assert cli([*common, "--out", str(tmp_path / "timed"), "--minutes", "0.01"]) == 0
    steps = read_manifest(tmp_path / "timed").metrics["steps"]
    assert steps >= 5
    assert cli([*common, "--out", str(tmp_path / "counted"), "--steps", str(steps)]) == 0
    files = [read_manifest(tmp_path / run).files for run in ("timed", "counted")]
    assert files[0]["model/model.safetensors"] == files[1]["model/model.safetensors"]
    assert files[0]["model/tokenizer.json"] == files[1]["model/tokenizer.json"]


def test_the_run_length_is_the_smallest_limit_given():
    assert fixed_length(10, None, None) is None  # neither --epochs nor --steps: --minutes decides
    assert fixed_length(10, 3, None) == 30 and fixed_length(10, 3, 7) == 7 and fixed_length(10, 1, 70) == 10
    assert timed_length(None, 2.0, 0.6, done=5) == 200  # 2 minutes at 0.6 s a step
    assert timed_length(30, 2.0, 0.6, done=5) == 30 and timed_length(None, 0.01, 0.6, done=5) == 5


def test_the_bundled_text_is_stdlib_docstrings_in_a_fixed_order():
    documents, modules = stdlib_documents()
    assert modules == list(STDLIB_MODULES)  # all of them exist on this Python
    assert len(documents) > 1000 and len(set(documents)) == len(documents)
    assert 300_000 < sum(map(len, documents)) < 3_000_000
    assert stdlib_documents()[0] == documents


JSON_DUMPS = "Serialize ``obj`` to a JSON formatted ``str``."


def test_the_bundled_chats_are_written_as_the_chat_template_renders_them():
    documents, _ = stdlib_documents()
    chats = [d for d in documents if d.startswith("<|user|>")]
    assert len(chats) > 1000 and chat_document("What does json.dumps do?", JSON_DUMPS) in chats
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    messages = [{"role": "user", "content": "q?"}, {"role": "assistant", "content": "a."}]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == chat_document("q?", "a.")
    prompt = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert chat_document("q?", "a.").startswith(prompt)  # the chat API's prompt is how every chat starts


def test_a_corpus_file_is_refused_by_name(tmp_path):
    lines = tmp_path / "lines.txt"
    lines.write_text("first document\nsecond document\n")
    assert file_documents(lines) == ["first document", "second document"]  # no blank line: a document per line
    cases = {"missing.txt": None, "empty.txt": b" \n\n", "latin1.txt": "café".encode("latin-1"), "one.txt": b"one"}
    for name, data in cases.items():
        if data is not None:
            (tmp_path / name).write_bytes(data)
        with pytest.raises(CorpusError, match=str(tmp_path / name)):
            file_documents(tmp_path / name)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_import_hf_takes_a_causal_lm(kind, tmp_path, cli, capsys):
    source = tiny_lm(kind, tmp_path / kind)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("café naïve\n\nthe model serves\n", encoding="utf-8")
    out = tmp_path / "artifact"
    assert cli(["import", "hf", str(source), "--out", str(out), "--prompts", str(prompts), "--name", "tiny"]) == 0
    manifest = read_manifest(out)
    assert manifest.task == "text_generation" and manifest.name == "tiny"
    assert manifest.model["architecture"] == kind and manifest.model["max_context"] == 256
    assert manifest.metrics["model_type"] == kind and manifest.metrics["chat_template"] is False
    assert [r["input"]["prompt"] for r in records_of(out)] == ["café naïve", "the model serves"]
    assert_records_replay(out)
    assert cli(["import", "hf", str(source), "--out", str(out), "--labels", "a,b"]) == 1
    assert "--labels does not apply to a text-generation checkpoint" in capsys.readouterr().err


def test_import_hf_records_built_in_prompts_and_refuses_a_missing_tokenizer(tmp_path, cli, capsys):
    source = tiny_lm("gpt2", tmp_path / "gpt2")
    assert cli(["import", "hf", str(source), "--out", str(tmp_path / "a")]) == 0
    assert [r["input"]["prompt"] for r in records_of(tmp_path / "a")] == BUILTIN_PROMPTS
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (source / name).unlink()
    assert cli(["import", "hf", str(source), "--out", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"maas import hf: error: {source}: no usable tokenizer files"), err


def test_the_task_is_read_from_the_config():
    assert detect_task(GPT2Config(architectures=["GPT2LMHeadModel"])) == "text-generation"
    assert detect_task(LlamaConfig(architectures=["LlamaForCausalLM"])) == "text-generation"
    assert detect_task(LlamaConfig(architectures=["LlamaForSequenceClassification"])) == "text-classification"
    assert detect_task(GPT2Config()) == "text-classification"  # no architectures, and GPT-2 has a classifier class
    assert detect_task(ViTConfig()) == "text-classification"  # refused there: not a sequence classifier


@pytest.mark.parametrize("line", ["train lm --corpus /no/such.txt --out {tmp}/x", "import hf /no/such --out {tmp}/x"])
def test_a_refusal_is_one_line_naming_the_path(line, tmp_path, cli, capsys):
    argv = line.format(tmp=tmp_path).split()
    assert cli(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"maas {' '.join(argv[:2])}: error: /no/such"), err
    assert not (tmp_path / "x").exists()
