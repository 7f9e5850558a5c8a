"""Tiny random causal LMs with a tiny byte-level BPE tokenizer, made offline in a second (never downloaded).

The tokenizer is trained on built-in text that mixes ASCII with multi-byte characters (accents, CJK, emoji), so
its tokens split UTF-8 sequences the way GPT-2's do; the model weights are random but seeded, so a checkpoint is
the same on every run. Integration tests reuse ``tiny_lm`` to serve the same models.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, PreTrainedTokenizerFast, Qwen2Config

KINDS = ("gpt2", "llama", "qwen2")
EOS = "<|endoftext|>"
_TEXT = (
    "the model serves tokens to every client while the engine batches requests step by step and "
    "a cancelled stream frees its slot at once café naïve über straße crème brûlée déjà vu "
    "日本語 東京 中文 Здравствуйте γειά σου π≈3.14 ∑ → ✓ 🙂 🚀 😀 ünïcödé señor año"
)
_WORDS = _TEXT.split()


def _corpus(lines: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 16))) for _ in range(lines)]


def tiny_tokenizer(add_bos: bool = False) -> PreTrainedTokenizerFast:
    """A GPT-2 style byte-level BPE (~450 tokens); ``<|endoftext|>`` is bos, eos and pad, as in GPT-2."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=450,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer)
    if add_bos:  # Llama-like: the tokenizer itself prepends BOS to every encoded text
        eos_id = tok.token_to_id(EOS)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{EOS} $A", pair=f"{EOS} $A {EOS} $B", special_tokens=[(EOS, eos_id)]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=EOS, unk_token=EOS)


def tiny_config(kind: str, vocab_size: int, eos_id: int):
    """Two layers, width 32; initializer_range 0.2 so the random model's next tokens depend on the text."""
    common = {"vocab_size": vocab_size, "bos_token_id": eos_id, "eos_token_id": eos_id, "pad_token_id": eos_id,
              "initializer_range": 0.2}  # fmt: skip
    if kind == "gpt2":
        return GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=256, **common)
    sizes = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "max_position_embeddings": 256}  # fmt: skip
    if kind == "llama":
        return LlamaConfig(**sizes, **common)
    if kind == "qwen2":
        return Qwen2Config(**sizes, **common)
    raise ValueError(f"unknown tiny LM kind {kind!r}; one of {KINDS}")


def tiny_lm(kind: str, directory: Path) -> Path:
    """Write a tiny random ``kind`` model ("gpt2" | "llama" | "qwen2") and its tokenizer to ``directory``.

    Loadable with ``AutoModelForCausalLM/AutoTokenizer.from_pretrained(directory)``; seeded, so the same on every run.
    """
    directory = Path(directory)
    tokenizer = tiny_tokenizer(add_bos=kind == "llama")
    config = tiny_config(kind, len(tokenizer), tokenizer.eos_token_id)
    torch.manual_seed(KINDS.index(kind) if kind in KINDS else 0)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.eos_token_id
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
