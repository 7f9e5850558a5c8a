"""Import a Hugging Face causal language model (GPT-2, Llama, Qwen2, Mistral ...) as a ``text_generation`` artifact.

    maas import hf DIR --out ARTIFACT [--name NAME] [--prompts FILE] [--task text-generation]
    e.g.  maas import hf ~/models/qwen2-0.5b-instruct --out artifacts/qwen --prompts my_prompts.txt

DIR is a local checkpoint that ``AutoModelForCausalLM`` and ``AutoTokenizer`` load; nothing is fetched from a hub.
``maas import hf`` takes this path when config.json's ``architectures`` names a causal LM (``...ForCausalLM``,
``...LMHeadModel``), or, without ``architectures``, when the model type has a causal LM class and no
sequence-classification one; ``--task text-generation`` forces it. The artifact (scripts/training/lm_artifact.py)
holds the weights as float32 safetensors (as the servers load them), the tokenizer with its chat template, and the
greedy continuations of ``--prompts FILE`` (one prompt per line) or of a few built-in prompts, which every server
replays when it loads the model.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from handlers.artifact import Manifest  # noqa: E402
from scripts.training.hf_checkpoint import ImportRefused, checkpoint_config  # noqa: E402
from scripts.training.lm_artifact import context_length, write_lm_artifact  # noqa: E402

# Recorded when the user gives no prompts: short, varied, and plain enough for a model of any size.
BUILTIN_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, there was a",
    "The three primary colours are",
    "To make a cup of tea, first",
    "Water boils at a temperature of",
]


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def read_prompts(path: Path) -> list[str]:
    """The non-empty lines of a UTF-8 file, each a prompt."""
    path = Path(path)
    if not path.is_file():
        raise ImportRefused(f"--prompts {path} {'is not a file' if path.exists() else 'does not exist'}")
    try:
        prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as exc:
        raise ImportRefused(f"--prompts {path} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    if not prompts:
        raise ImportRefused(f"--prompts {path} holds no prompt: write one per line")
    return prompts


def load_causal_lm(source: Path):
    """``(config, model in float32, tokenizer)`` of a local checkpoint; refused in one line if either does not load."""
    config = checkpoint_config(source)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, local_files_only=True, dtype=torch.float32).eval()
    except (ValueError, KeyError, OSError, TypeError) as exc:
        raise ImportRefused(f"{source} does not load as a causal language model ({config.model_type}): "
                            f"{first_line(exc)}") from None  # fmt: skip
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    except (ValueError, OSError, TypeError) as exc:
        raise ImportRefused(f"{source}: no usable tokenizer files (tokenizer.json, tokenizer_config.json ...): "
                            f"{first_line(exc)}") from None  # fmt: skip
    embeddings = model.get_input_embeddings().num_embeddings
    if len(tokenizer) < 2 or not tokenizer("Hello, world.")["input_ids"]:  # transformers made an empty one
        raise ImportRefused(f"{source}: no usable tokenizer files (tokenizer.json, tokenizer_config.json ...): the "
                            "tokenizer loaded without a vocabulary")  # fmt: skip
    if len(tokenizer) > embeddings:
        raise ImportRefused(f"{source}: the tokenizer has {len(tokenizer)} tokens, the model embeds {embeddings}: "
                            "not this model's tokenizer")  # fmt: skip
    try:
        context_length(config)
    except ValueError as exc:
        raise ImportRefused(f"{source}: {exc}") from None
    return config, model, tokenizer


def import_hf_lm(source: Path, out: Path, name: str | None = None, prompts: Path | None = None,
                 max_tokens: int = 24) -> Manifest:  # fmt: skip
    source, out = Path(source), Path(out)
    texts = read_prompts(prompts) if prompts else BUILTIN_PROMPTS
    config, model, tokenizer = load_causal_lm(source)
    has_template = bool(getattr(tokenizer, "chat_template", None))
    metrics = {
        "source": str(source.resolve()),
        "model_type": config.model_type,
        "parameters": sum(p.numel() for p in model.parameters()),
        "prompts": str(prompts) if prompts else "built-in prompts; targets are the model's own greedy answers",
        "chat_template": has_template,
    }
    manifest = write_lm_artifact(out, model, tokenizer, name or out.name, texts, metrics, max_tokens)
    print(f"imported {source} ({config.model_type}, {metrics['parameters']:,} parameters, context "
          f"{manifest.model['max_context']}) to {out}; {len(texts)} greedy continuations recorded")  # fmt: skip
    if not has_template:
        print("note: the tokenizer has no chat template, so the chat API cannot render messages for this model "
              "(completions work)")  # fmt: skip
    return manifest
