"""Train the demo language model: a small GPT-2 from scratch, in two minutes on a CPU, on text every machine has.

    maas train lm --out ARTIFACT [--minutes 2] [--epochs N] [--steps N] [--seed 0] [--corpus FILE] [--name NAME]
    e.g.  maas train lm --out artifacts/docs-lm
          maas train lm --corpus my_notes.txt --epochs 3 --out artifacts/notes-lm

No model hub is reachable here, so the Quick start's language model is trained, not downloaded: by default on the
docstrings of ~100 Python standard-library modules (scripts/training/lm_corpus.py, ~0.8 MB of English about
programming), or on ``--corpus FILE`` (UTF-8 text; documents are its paragraphs, or its lines when it has no blank
line). 5% of the documents are held out (seeded) to measure perplexity and to take the recorded prompts from.

* Tokenizer: byte-level BPE (4,096 tokens) trained on the training documents; ``<|endoftext|>`` is bos, eos, pad
  and unk, and separates the packed documents. A plain chat template (``<|role|>`` lines) lets the chat API use it;
  the default text holds chats in it, so the model answers in kind.
* Model: GPT-2, 4 layers, width 192, 4 heads, 256 positions (2.6 M parameters): ~430-520 steps (about one pass over
  the default text, its chats three times) in two minutes on 2 cores, ~15 ms a token to decode. A demo: its held-out
  perplexity is ~165-200 (4,096-token vocabulary), its chat answers are in kind and poor ("What does json.dumps
  do?" -> "Return a string of the given object."); a larger model would see less text in the same time.
* Training: AdamW (warm-up over 10 steps, then cosine decay), 4 sequences of 256 tokens a step, bfloat16 autocast
  where the CPU has native bfloat16. The length is ``--steps``, or ``--epochs`` passes over the text, or what fits
  in ``--minutes`` (default 2) at the speed of the first 5 steps, whichever is smallest. Those 5 steps are warm-up,
  whose rates do not depend on the length, so a timed run is the same as one given its step count: the same seed,
  text and steps give the same model on the same machine (``--steps`` repeats a run; its manifest records them).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# OpenMP threads that spin while waiting lose ~2x when another process shares the 2 cores; sleeping ones do not.
# (Read when torch loads: `maas train lm` imports nothing before this module.)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402
from tqdm import tqdm  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast  # noqa: E402

from handlers.artifact import HELD_OUT_NAME, Manifest  # noqa: E402
from scripts import at_least  # noqa: E402
from scripts.training.common import seed_everything, warmup_cosine_schedule  # noqa: E402
from scripts.training.lm_artifact import write_lm_artifact  # noqa: E402
from scripts.training.lm_corpus import (  # noqa: E402
    CHAT_TEMPLATE,
    CorpusError,
    file_documents,
    is_chat,
    stdlib_description,
    stdlib_documents,
)

EOS = "<|endoftext|>"
DEFAULT_MINUTES = 2.0
CHAT_REPEATS = 3
HELD_OUT_FRACTION = 0.05
PROMPTS, PROMPT_WORDS = 8, 8
MAX_EVAL_TOKENS = 65536  # held-out tokens scored at the end, at most (a large --corpus holds out more)
REPORTS = 5  # progress lines (with a held-out perplexity on a sample) per run
WARMUP = 10  # steps of linear learning-rate warm-up, whatever the run's length
CALIBRATION = 5  # steps timed before a --minutes run fixes its length (the first is not counted)


@dataclass(frozen=True)
class Size:
    n_layer: int = 4
    n_embd: int = 192
    n_head: int = 4
    context: int = 256  # positions, and the length of every training sequence
    batch_size: int = 4
    vocab_size: int = 4096
    lr: float = 3e-3


SIZES = {"demo": Size(), "tiny": Size(n_layer=1, n_embd=32, n_head=2, context=32, batch_size=4, vocab_size=400)}


def train_tokenizer(documents: list[str], vocab_size: int, context: int) -> PreTrainedTokenizerFast:
    """A GPT-2 style byte-level BPE learnt from ``documents``: any text encodes, no unknown bytes."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train_from_iterator(documents, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=EOS,
                                        unk_token=EOS, model_max_length=context)  # fmt: skip
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def pack(tokenizer, documents: list[str]) -> torch.Tensor:
    """All documents' tokens in one row, each followed by ``<|endoftext|>``."""
    eos = tokenizer.eos_token_id
    ids = [t for encoding in tokenizer.backend_tokenizer.encode_batch(documents) for t in [*encoding.ids, eos]]
    return torch.tensor(ids, dtype=torch.long)


def split(documents: list[str], seed: int) -> tuple[list[str], list[str]]:
    """``(train, held_out)``: a seeded 5% of the documents (at least one) held out, each part in corpus order."""
    order = np.random.default_rng(seed).permutation(len(documents))
    held = set(order[: max(1, round(len(documents) * HELD_OUT_FRACTION))].tolist())
    return [d for i, d in enumerate(documents) if i not in held], [d for i, d in enumerate(documents) if i in held]


def autocast(enabled: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


def bf16_is_fast() -> bool:
    """oneDNN has native bfloat16 kernels here (AVX-512 BF16 / AMX): autocast then runs ~2x faster on 2 cores."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def evaluate(model, ids: torch.Tensor, context: int, bf16: bool = False, max_tokens: int = MAX_EVAL_TOKENS):
    """``(perplexity, tokens scored)`` over ``ids`` cut into ``context``-long windows (the last one shorter)."""
    ids = ids[: max_tokens + 1]
    model.eval()
    total, count = 0.0, 0
    with torch.inference_mode(), autocast(bf16):
        for i in range(0, len(ids) - 1, context):
            window = ids[i : i + context + 1][None]  # one token of overlap: every token but the first is scored
            logits = model(input_ids=window[:, :-1]).logits.float()
            total += float(torch.nn.functional.cross_entropy(logits[0], window[0, 1:], reduction="sum"))
            count += window.shape[1] - 1
    model.train()
    return math.exp(total / max(1, count)), count


def batches(n: int, batch_size: int, seed: int):
    """Indices of the training sequences, a fresh seeded order each epoch, forever."""
    rng = np.random.default_rng(seed)
    while True:
        order = torch.from_numpy(rng.permutation(n))
        for i in range(0, n, batch_size):
            yield order[i : i + batch_size]


def step(model, optimizer, x: torch.Tensor, bf16: bool) -> float:
    with autocast(bf16):
        loss = model(input_ids=x, labels=x).loss
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return loss.item()


def fixed_length(per_epoch: int, epochs: int | None, steps: int | None) -> int | None:
    """The run's length in steps when ``--steps`` or ``--epochs`` set one (the smaller of the two)."""
    limits = [n for n in (steps, epochs and epochs * per_epoch) if n]
    return min(limits) if limits else None


def timed_length(limit: int | None, minutes: float, seconds_per_step: float, done: int) -> int:
    """What fits in ``minutes`` at the measured speed (never fewer than the ``done`` steps), capped by ``limit``."""
    fits = max(done, int(minutes * 60 / seconds_per_step))
    return min(limit, fits) if limit else fits


def fit(model, sequences: torch.Tensor, held_ids: torch.Tensor, size: Size, limit: int | None,
        minutes: float | None, bf16: bool, seed: int) -> tuple[int, list[float]]:  # fmt: skip
    """Train ``model`` in place; returns ``(steps, losses)``. Under ``minutes``, the first ``CALIBRATION`` steps
    (all warm-up, whose learning rates do not depend on the length) are timed to fix the length and the schedule."""
    batch_size, per_epoch = min(size.batch_size, len(sequences)), math.ceil(len(sequences) / size.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=size.lr, betas=(0.9, 0.95), weight_decay=0.1)
    total = limit if minutes is None else None
    schedule = warmup_cosine_schedule(optimizer, total or WARMUP, WARMUP)  # the same first WARMUP steps for any total
    losses, times, report_every, start = [], [], 1, time.perf_counter()
    order = batches(len(sequences), batch_size, seed)
    bar = tqdm(total=total, desc="training", unit="step", disable=None, leave=False)  # terminals only
    s = 0
    while total is None or s < total:
        began = time.perf_counter()
        losses.append(step(model, optimizer, sequences[next(order)], bf16))
        times.append(time.perf_counter() - began)
        s += 1
        bar.update()
        if total is None and s == min(CALIBRATION, limit or CALIBRATION):
            per_step = float(np.mean(times[1:] or times))  # the first step also builds the kernels
            total = timed_length(limit, minutes, per_step, s)
            schedule = warmup_cosine_schedule(optimizer, total, WARMUP)
            for _ in range(s - 1):  # where the provisional schedule stood: the same rates so far
                schedule.step()
            bar.total = total
            tqdm.write(f"{per_step:.2f}s a step: {total} steps ({total / per_epoch:.2f} epochs) in {minutes:g} min")
        schedule.step()
        report_every = max(1, math.ceil((total or s + 1) / REPORTS))
        if total is not None and (s % report_every == 0 or s == total):
            sample_ppl, _ = evaluate(model, held_ids, size.context, bf16, max_tokens=8 * size.context)
            tqdm.write(f"step {s:5d}/{total} (epoch {s / per_epoch:.2f}) train loss "
                       f"{np.mean(losses[-report_every:]):.3f} held-out perplexity ~{sample_ppl:.1f} "
                       f"({time.perf_counter() - start:.0f}s)")  # fmt: skip
    bar.close()
    return s, losses


def train(out: Path, corpus: Path | None = None, seed: int = 0, epochs: int | None = None, steps: int | None = None,
          minutes: float | None = None, name: str | None = None, size: Size = SIZES["demo"]) -> Manifest:  # fmt: skip
    start = time.perf_counter()
    seed_everything(seed)
    if corpus:
        documents, described, modules = file_documents(corpus), str(corpus), None
    else:
        documents, modules = stdlib_documents()
        described = stdlib_description(modules)
    train_docs, held_docs = split(documents, seed)
    tokenizer = train_tokenizer(train_docs, size.vocab_size, size.context)
    if not corpus:  # the chats, seen CHAT_REPEATS times an epoch: two minutes of docstrings alone teach no turn-taking
        train_docs = train_docs + [d for d in train_docs if is_chat(d)] * (CHAT_REPEATS - 1)
    train_ids, held_ids = pack(tokenizer, train_docs), pack(tokenizer, held_docs)
    n_seq = len(train_ids) // size.context
    if n_seq < 1:
        raise CorpusError(f"{corpus or described}: {len(train_ids)} training tokens, fewer than one "
                          f"{size.context}-token sequence; give more text")  # fmt: skip
    sequences = train_ids[: n_seq * size.context].view(n_seq, size.context)
    batch_size = min(size.batch_size, n_seq)

    eos = tokenizer.eos_token_id
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=size.context, n_embd=size.n_embd, n_layer=size.n_layer,
                        n_head=size.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=eos,
                        eos_token_id=eos, pad_token_id=eos)  # fmt: skip
    model = GPT2LMHeadModel(config)
    model.generation_config.pad_token_id = eos
    parameters = sum(p.numel() for p in model.parameters())
    bf16 = bf16_is_fast()
    per_epoch = math.ceil(n_seq / batch_size)
    limit = fixed_length(per_epoch, epochs, steps)
    if limit is None and minutes is None:
        minutes = DEFAULT_MINUTES
    plan = f"{limit} steps ({limit / per_epoch:.2f} epochs)" if limit else ""
    plan += (" at most, " if limit and minutes else "") + (f"{minutes:g} minutes" if minutes else "")
    print(f"training a {size.n_layer}-layer GPT-2 ({parameters:,} parameters) on {len(train_ids):,} tokens of "
          f"{described} ({len(train_docs):,} documents), {batch_size}x{size.context} tokens a step, for {plan}; "
          f"holding out {len(held_docs)} documents ({len(held_ids):,} tokens)")  # fmt: skip
    train_start = time.perf_counter()
    total, losses = fit(model, sequences, held_ids, size, limit, minutes, bf16, seed)
    train_seconds = time.perf_counter() - train_start
    model.eval()
    perplexity, held_tokens = evaluate(model, held_ids, size.context)  # float32, as served

    prompts = [" ".join(doc.split()[:PROMPT_WORDS]) for doc in held_docs[:PROMPTS]]
    metrics = {
        "held_out_perplexity": round(perplexity, 2),
        "train_loss": round(float(np.mean(losses[-max(1, total // REPORTS) :])), 4),
        "train_tokens": len(train_ids),
        "held_out_tokens": held_tokens,
        "steps": total,
        "epochs": round(total / per_epoch, 3),
        "train_seconds": round(train_seconds, 1),
        "parameters": parameters,
        "corpus": described,
        "documents": {"train": len(train_docs), "held_out": len(held_docs)},
        "seed": seed,
        "precision": "bfloat16 autocast" if bf16 else "float32",
        **({"modules": modules} if modules else {}),
    }
    out = Path(out)
    metrics["seconds"] = round(time.perf_counter() - start, 1)  # the artifact's writing is a few seconds more
    manifest = write_lm_artifact(out, model, tokenizer, name or out.name, prompts, metrics)
    print(f"held-out perplexity {perplexity:.1f} on {held_tokens:,} tokens; trained in {train_seconds:.0f}s "
          f"({time.perf_counter() - start:.0f}s in all); artifact written to {out}")  # fmt: skip
    record = json.loads((out / HELD_OUT_NAME).read_text(encoding="utf-8").splitlines()[0])
    print(f"sample (greedy): {record['input']['prompt']!r} -> {record['target']!r}")
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="the artifact directory to write")
    parser.add_argument("--corpus", type=Path, help="your UTF-8 text file (default: Python's stdlib docstrings)")
    parser.add_argument("--minutes", type=float, help=f"training time budget (default {DEFAULT_MINUTES:g} when "
                        "neither --epochs nor --steps is given)")  # fmt: skip
    parser.add_argument("--epochs", type=at_least(1), help="passes over the training text")
    parser.add_argument("--steps", type=at_least(1), help="optimizer steps exactly (repeats a run: see its manifest)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", help="model name on the servers (default: the --out directory's name)")
    parser.add_argument("--size", choices=sorted(SIZES), default="demo", help=argparse.SUPPRESS)  # tests: "tiny"
    args = parser.parse_args(argv)
    if args.minutes is not None and not 0 < args.minutes < math.inf:
        parser.error(f"--minutes must be more than 0, not {args.minutes:g}")
    try:
        train(args.out, args.corpus, args.seed, args.epochs, args.steps, args.minutes, args.name, SIZES[args.size])
    except CorpusError as exc:
        raise SystemExit(f"maas train lm: {exc}") from None


if __name__ == "__main__":
    main()
