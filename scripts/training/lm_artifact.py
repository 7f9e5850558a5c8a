"""The language-model artifact: a Hugging Face causal LM, its greedy answers to a few prompts, and the manifest.

    ARTIFACT/model/          save_pretrained of the model (safetensors) and of its tokenizer (chat template included)
    ARTIFACT/held_out.jsonl  {"input": {"prompt", "max_tokens", "temperature": 0}, "target", "token_ids", "margins"}
    ARTIFACT/pipeline.json   task text_generation, model {"format": "hf_causal_lm", "dir": "model", ...}

Written by ``maas train lm`` and ``maas import hf`` alike. A server replays the recorded greedy generations when it
loads the model (handlers/generation/service.py) and accepts a different token only where the recorded top-1 and
top-2 logits were a near tie, so ``margins`` holds that gap for every step the model took: one per token of
``token_ids``, plus one for the end-of-sequence step when the continuation ended there (the token itself is left
out of ``token_ids`` and ``target``). Greedy here is the argmax of the raw logits, as served: the checkpoint's own
generation settings (repetition penalty, forced tokens ...) are set aside while recording.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import GenerationConfig

from handlers.artifact import HELD_OUT_NAME, Manifest, write_artifact_manifest

TASK = "text_generation"
MODEL_FORMAT = "hf_causal_lm"
MODEL_DIR = "model"
MAX_BATCH_SIZE = 16  # sequences decoding at once
TOKENS_LIMIT = 256  # new tokens a request may ask for, at most


def context_length(config) -> int:
    """The longest sequence (prompt + new tokens) the model's positions allow."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 1:
            return value
    raise ValueError(f"the {config.model_type} config names no context length (max_position_embeddings)")


def eos_ids(model, tokenizer) -> list[int]:
    """End-of-sequence ids, as the serving engine reads them: the tokenizer's and the generation config's."""
    ids = set()
    for value in (tokenizer.eos_token_id, model.generation_config.eos_token_id):
        ids.update([value] if isinstance(value, int) else value or [])
    return sorted(ids)


@contextmanager
def plain_greedy(model, settings: GenerationConfig) -> Iterator[None]:
    """``generate`` fills unset values from ``model.generation_config``: swap in one without logits processors."""
    saved, model.generation_config = model.generation_config, settings
    try:
        yield
    finally:
        model.generation_config = saved


def greedy_record(model, tokenizer, prompt: str, max_tokens: int, max_context: int) -> dict:
    """One held-out line: the greedy continuation of ``prompt`` (at most ``max_tokens``) and each step's margin."""
    encoded = tokenizer(prompt, return_tensors="pt")  # the tokenizer's defaults, as the server encodes a prompt
    n = encoded["input_ids"].shape[1]
    budget = min(max_tokens, max_context - n)
    if n == 0 or budget < 1:
        raise ValueError(f"prompt {prompt[:40]!r} is {n} tokens: no room for a continuation in the model's "
                         f"{max_context}-token context")  # fmt: skip
    stop = eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stop or [0])[0]
    settings = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=budget, eos_token_id=stop or None,
                                pad_token_id=pad, output_scores=True, output_logits=True,
                                return_dict_in_generate=True)  # fmt: skip
    with torch.inference_mode(), plain_greedy(model, settings):
        out = model.generate(**encoded, generation_config=settings)
    new = out.sequences[0, n:].tolist()
    logits = torch.stack([step[0] for step in out.logits]).float()  # [steps, vocab], raw: what a server argmaxes
    if logits.argmax(-1).tolist() != new[: len(logits)]:
        raise RuntimeError("generate() did not pick the argmax of the logits; greedy records would not replay")
    top2 = logits.topk(2, dim=-1).values
    margins = (top2[:, 0] - top2[:, 1]).tolist()
    token_ids = new[:-1] if new and new[-1] in stop else new
    return {
        "input": {"prompt": prompt, "max_tokens": budget, "temperature": 0},
        "target": tokenizer.decode(token_ids, skip_special_tokens=True),
        "token_ids": token_ids,
        "margins": margins[: len(new)],
    }


def lm_manifest(name: str, model, max_context: int, metrics: dict) -> Manifest:
    return Manifest(
        name=name,
        task=TASK,
        model={
            "format": MODEL_FORMAT,
            "dir": MODEL_DIR,
            "architecture": model.config.model_type,
            "max_context": max_context,
        },  # fmt: skip
        labels=None,
        preprocess={},
        serving={"max_batch_size": MAX_BATCH_SIZE, "max_tokens_limit": min(TOKENS_LIMIT, max_context - 1)},
        metrics=metrics,
    )


def write_lm_artifact(out: Path, model, tokenizer, name: str, prompts: list[str], metrics: dict,
                      max_tokens: int = 24) -> Manifest:  # fmt: skip
    """Save ``model`` and ``tokenizer`` under ``out/model``, record greedy continuations of ``prompts`` (one at a
    time, so no padding changes a logit) in ``held_out.jsonl``, and write the checksummed manifest."""
    out = Path(out)
    if not prompts:
        raise ValueError("no prompts to record: the self-check needs at least one")
    model.eval()
    max_context = context_length(model.config)
    records = [greedy_record(model, tokenizer, prompt, max_tokens, max_context) for prompt in prompts]
    out.mkdir(parents=True, exist_ok=True)
    if (out / MODEL_DIR).exists():  # a previous run's files would be checksummed and shipped with the new ones
        shutil.rmtree(out / MODEL_DIR)
    model.save_pretrained(out / MODEL_DIR)
    tokenizer.save_pretrained(out / MODEL_DIR)
    with open(out / HELD_OUT_NAME, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    manifest = lm_manifest(name, model, max_context, metrics)
    write_artifact_manifest(out, manifest)
    return manifest
