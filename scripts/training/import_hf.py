"""Import a trained Hugging Face sequence classifier (BERT, DistilBERT, RoBERTa, ELECTRA, DeBERTa, XLM-R ...), or a
causal language model (GPT-2, Llama, Qwen2 ...: scripts/training/import_hf_lm.py, options --prompts and --task).

    maas import hf DIR --out ARTIFACT [--name NAME] [--held-out FILE] [--labels a,b,...] [--max-length N]
    maas import hf DIR --out ARTIFACT [--name NAME] [--prompts FILE]     (a causal LM)
    e.g.  maas import hf ~/models/my-roberta-sentiment --out artifacts/reviews --held-out reviews_test.csv

Which one: ``--task``, else config.json's ``architectures`` (``...ForCausalLM`` / ``...LMHeadModel``: a language
model), else the model type (one with a causal LM class and no sequence-classification class: a language model).

DIR is a local checkpoint that ``AutoModelForSequenceClassification`` and ``AutoTokenizer`` load (config.json, the
weights, the tokenizer files); nothing is fetched from a hub. Writes an ordinary eager artifact: the weights as
safetensors (a pickled ``pytorch_model.bin`` is converted), the tokenizer, ``pipeline.json`` and the held-out rows,
so ``maas export`` / ``maas build`` / the load-time self-check work as for the models trained here.

* Labels come from ``config.id2label`` (``--labels`` overrides them; placeholder names such as LABEL_0 are refused
  unless given). A ``problem_type: multi_label_classification`` model scores each label with a sigmoid.
* ``max_length``: ``--max-length``, else the tokenizer's ``model_max_length`` capped by the position embeddings.
* ``--held-out FILE``: CSV with columns ``text,label`` or JSONL ``{"text": ..., "label": ...}``, your own
  labelled rows; exports are verified and the held-out accuracy measured on them. Without it, a few built-in
  sentences are recorded with the model's own answers as targets (enough for export checks and the self-check,
  not a measure of accuracy).
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402

from handlers.artifact import Manifest, write_held_out  # noqa: E402
from scripts.training.common import write_artifact  # noqa: E402
from scripts.training.hf_checkpoint import TASKS, ImportRefused, checkpoint_config, detect_task  # noqa: E402,F401
from scripts.training.import_hf_lm import import_hf_lm  # noqa: E402
from scripts.training.text_data import DataError, read_labelled_texts  # noqa: E402
from scripts.training.train_text import text_manifest  # noqa: E402

PLACEHOLDER = re.compile(r"LABEL_\d+")
# Rows recorded when the user gives no held-out file: varied length and tone, so exports are checked at several
# sequence lengths. Their targets are the model's own answers.
PROBE_TEXTS = [
    "Great.",
    "This was a complete waste of time and money.",
    "I loved every minute of it, and I would happily see it again with friends.",
    "The service was slow, but the food made up for it.",
    "Not bad at all.",
    "An unremarkable, forgettable experience from start to finish.",
    "Absolutely wonderful!",
    "It arrived broken and nobody answered my emails for two weeks, so I will not order from them again.",
    "Fine, I guess.",
    "The plot is thin, the acting is wooden and the ending makes no sense whatsoever.",
    "A warm, funny and surprisingly moving story.",
    "Terrible.",
    "The manual is clear and setting it up took five minutes.",
    "I expected more, given all the praise it gets.",
    "Works exactly as described; the battery lasts for days.",
    "Nothing here is new, but it is done with care.",
]


def load_checkpoint(source: Path):
    config = checkpoint_config(source)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(source, local_files_only=True).eval()
    except (ValueError, KeyError, OSError) as exc:
        raise ImportRefused(f"{source} does not load as a sequence classifier ({config.model_type}): {exc}") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    except (ValueError, OSError, TypeError) as exc:
        raise ImportRefused(f"{source}: no usable tokenizer files ({exc})") from None
    return config, model, tokenizer


def label_names(config, override: list[str] | None) -> list[str]:
    labels = [config.id2label[i] for i in range(config.num_labels)]
    if override:
        if len(override) != len(labels):
            raise ImportRefused(f"--labels names {len(override)} labels; the model has {len(labels)} outputs")
        return override
    if all(PLACEHOLDER.fullmatch(str(label)) for label in labels):
        raise ImportRefused(f"config.id2label holds only placeholder names ({', '.join(labels)}): pass --labels "
                            "with the real names, in output order")  # fmt: skip
    return [str(label) for label in labels]


def max_length_of(config, tokenizer, override: int | None) -> int:
    limit = getattr(config, "max_position_embeddings", None) or 512
    if config.model_type in ("roberta", "xlm-roberta", "camembert"):
        limit -= 2  # their positions start after the padding index
    wanted = override or min(int(tokenizer.model_max_length), limit)
    if wanted > limit:
        raise ImportRefused(f"--max-length {wanted} exceeds the model's {limit} positions")
    return wanted


def read_rows(path: Path, labels: list[str], multi_label: bool) -> tuple[list[str], list]:
    """``(texts, targets)`` from a CSV (columns text,label) or JSONL file; unknown labels are refused by name.

    A multi-label row's label is a list (JSONL) or ``;``-separated names (CSV), possibly empty."""
    texts, raw = read_labelled_texts(path)
    if multi_label:
        targets = [r if isinstance(r, list) else [n for n in str(r).split(";") if n] for r in raw]
    else:
        targets = [str(r) for r in raw]
    unknown = sorted({str(t) for target in targets for t in (target if multi_label else [target])} - set(labels))
    if unknown:
        raise ImportRefused(f"{path}: labels {unknown} are not among the model's labels {labels}")
    return texts, targets


def import_hf(source: Path, out: Path, name: str | None = None, held_out: Path | None = None,
              labels: list[str] | None = None, max_length: int | None = None) -> Manifest:  # fmt: skip
    source, out = Path(source), Path(out)
    config, model, tokenizer = load_checkpoint(source)
    labels = label_names(config, labels)
    max_length = max_length_of(config, tokenizer, max_length)
    multi_label = config.problem_type == "multi_label_classification"
    texts, targets = read_rows(held_out, labels, multi_label) if held_out else (PROBE_TEXTS, None)
    with torch.inference_mode():
        logits = torch.cat([
            model(**tokenizer(texts[i : i + 32], truncation=True, max_length=max_length, padding=True,
                              return_tensors="pt")).logits
            for i in range(0, len(texts), 32)
        ])  # fmt: skip
    if multi_label:  # every label scoring 0.5 or more, as the served answer's "labels"
        answers = [[labels[j] for j in np.flatnonzero(row)] for row in (torch.sigmoid(logits) >= 0.5).numpy()]
    else:
        answers = [labels[i] for i in logits.argmax(-1).numpy()]
    metrics = {"held_out_rows": len(texts), "source": str(source.resolve()), "model_type": config.model_type}
    if targets:  # multi-label: every label of the row right
        hits = [sorted(a) == sorted(t) if multi_label else a == t for a, t in zip(answers, targets, strict=True)]
        metrics["held_out_accuracy"] = round(float(np.mean(hits)), 4)
    else:
        metrics["held_out"] = "built-in probe sentences; targets are the model's own answers"

    out.mkdir(parents=True, exist_ok=True)
    config.id2label, config.label2id = dict(enumerate(labels)), {label: i for i, label in enumerate(labels)}
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    write_held_out(out, list(texts), targets or answers)
    manifest = text_manifest(name or out.name, labels, config.model_type, max_length, metrics, multi_label)
    write_artifact(out, manifest)
    print(f"imported {source} ({config.model_type}, {len(labels)} labels, max_length {max_length}) to {out}; "
          f"held-out: {metrics.get('held_out_accuracy', metrics.get('held_out'))}")  # fmt: skip
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="a local Hugging Face checkpoint: a classifier or a causal LM")
    parser.add_argument("--out", type=Path, required=True, help="the artifact directory to write")
    parser.add_argument("--name", help="model name on the servers (default: the --out directory's name)")
    parser.add_argument("--task", choices=TASKS, help="what the checkpoint is (default: read from its config)")
    parser.add_argument("--held-out", type=Path, help="classifier: labelled rows, CSV (text,label) or JSONL")
    parser.add_argument("--labels", type=lambda v: v.split(","), help="classifier: label names in output order")
    parser.add_argument("--max-length", type=int, help="classifier: tokens per text (longer texts keep their head)")
    parser.add_argument("--prompts", type=Path, help="language model: prompts to record, one per line")
    args = parser.parse_args(argv)
    try:
        task = args.task or detect_task(checkpoint_config(args.source))
        wrong = ["--prompts"] if task == TASKS[0] else ["--held-out", "--labels", "--max-length"]
        given = [option for option in wrong if getattr(args, option[2:].replace("-", "_")) is not None]
        if given:
            raise ImportRefused(f"{given[0]} does not apply to a {task} checkpoint ({args.source})")
        if task == "text-generation":
            import_hf_lm(args.source, args.out, args.name, args.prompts)
        else:
            import_hf(args.source, args.out, args.name, args.held_out, args.labels, args.max_length)
    except (ImportRefused, DataError) as exc:
        raise SystemExit(f"maas import hf: {exc}") from None


if __name__ == "__main__":
    main()
