"""Reading a Hugging Face checkpoint directory: its config, what kind of model it is, and the one refusal type.

Shared by ``maas import hf``'s two importers (``import_hf.py``: sequence classifiers; ``import_hf_lm.py``: causal
language models).
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import AutoConfig  # noqa: E402
from transformers.models.auto.modeling_auto import (  # noqa: E402
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
)


class ImportRefused(ValueError):
    """The directory cannot be imported as it is; the message says why and what to do."""


TASKS = ("text-classification", "text-generation")
CAUSAL_LM_CLASSES = ("ForCausalLM", "LMHeadModel")  # LlamaForCausalLM, GPT2LMHeadModel ...


def checkpoint_config(source: Path):
    """The checkpoint's config; a path that is not a Hugging Face model directory is refused by name."""
    if not source.is_dir():
        raise ImportRefused(f"{source} {'is not a directory' if source.exists() else 'does not exist'}: pass a "
                            "Hugging Face model directory (config.json, weights, tokenizer files)")  # fmt: skip
    if not (source / "config.json").is_file():
        raise ImportRefused(f"{source} has no config.json: not a Hugging Face model directory")
    try:
        return AutoConfig.from_pretrained(source, local_files_only=True)
    except (ValueError, KeyError, OSError) as exc:
        line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ImportRefused(f"{source}/config.json does not load: {line}") from None


def detect_task(config) -> str:
    """``text-generation`` for a causal LM checkpoint, else ``text-classification`` (the module docstring says how)."""
    architectures = config.architectures or []
    if architectures:
        causal = any(a.endswith(CAUSAL_LM_CLASSES) for a in architectures)
        return "text-generation" if causal else "text-classification"
    model_type = config.model_type
    only_causal = model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    only_causal &= model_type not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES
    return "text-generation" if only_causal else "text-classification"
