"""Knowledge distillation: a student with fewer transformer layers, taught by the teacher's soft labels.

    maas compress distill ARTIFACT --layers K [--out DIR] [--epochs 2] [--lr 1e-4] [--seed 0]
                          [--data FILE --text-column text] [--train-size N] [--max-accuracy-drop 0.015]

The student is the teacher with K of its L layers: the same embeddings, classifier head and tokenizer, and layers
initialised from the teacher's, evenly spaced with the first and the last kept (6 -> 3: layers 0, 2, 5; the
DistilBERT recipe keeps every other layer). It is trained on the teacher's temperature-softened probabilities
(``kd.py``) over the training texts: the bundled sentiment model's whole training split (the rows its own training
left unused included), or ``--data`` (labels not needed). The result is an ordinary eager artifact, judged by the
acceptance rule of ``kd.py`` and then exported, verified, self-checked and served like any model::

    .venv/bin/maas compress distill artifacts/sentiment --layers 3 --out artifacts/sentiment-l3
    .venv/bin/maas build artifacts/sentiment-l3          # int8 export (verified), .mar and Triton model
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np

from scripts import ARTIFACTS_DIR, at_least
from scripts.compression.kd import MAX_ACCURACY_DROP, CompressionError, load_teacher, teach_and_write, training_texts

LAYER_KEY = re.compile(r"^(.*\.layer\.)(\d+)(\..*)$")  # BERT, RoBERTa, ELECTRA: encoder.layer.N; DistilBERT too


def kept_layers(total: int, keep: int) -> list[int]:
    """``keep`` of ``total`` layer indices, evenly spaced, the first and the last kept."""
    if not 1 <= keep < total:
        raise CompressionError(f"--layers must be between 1 and {total - 1} (the teacher has {total} layers)")
    return [0] if keep == 1 else sorted({int(round(x)) for x in np.linspace(0, total - 1, keep)})


def make_student(teacher, layers: list[int]):
    """The teacher's architecture with only ``layers``, their weights and every other weight copied."""
    config = teacher.config.__class__.from_dict(teacher.config.to_dict())
    config.num_hidden_layers = len(layers)
    student = type(teacher)(config)
    weights = {}
    for key, value in teacher.state_dict().items():
        match = LAYER_KEY.match(key)
        if match is None:
            weights[key] = value
        elif int(match.group(2)) in layers:
            weights[f"{match.group(1)}{layers.index(int(match.group(2)))}{match.group(3)}"] = value
    student.load_state_dict(weights, strict=True)
    return student.eval()


def distill(artifact: Path, layers: int, out: Path, epochs: int = 2, lr: float = 1e-4, seed: int = 0,
            data: Path | None = None, text_column: str = "text", train_size: int | None = None,
            max_accuracy_drop: float = MAX_ACCURACY_DROP):  # fmt: skip
    manifest, teacher, tokenizer = load_teacher(artifact)
    kept = kept_layers(teacher.config.num_hidden_layers, layers)
    student = make_student(teacher, kept)
    texts = training_texts(manifest, data, text_column, train_size)
    print(f"distilling {artifact.name} ({teacher.config.num_hidden_layers} layers) into {len(kept)} layers "
          f"(teacher's layers {kept}) on {len(texts)} texts, {epochs} epoch(s)")  # fmt: skip
    method = {"method": "distillation", "teacher": artifact.name, "teacher_layers": kept}
    return teach_and_write(teacher, student, tokenizer, artifact, manifest, out, method, texts, epochs, lr, seed,
                           data, max_accuracy_drop)  # fmt: skip


def add_common_arguments(parser, epochs: int = 2, lr: float = 1e-4) -> None:
    parser.add_argument("--epochs", type=at_least(1), default=epochs, help=f"default {epochs}")
    parser.add_argument("--lr", type=float, default=lr, help=f"default {lr:g}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, help="texts to teach on (CSV with a header row, or JSONL)")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--train-size", type=int, help="use the first N texts only")
    parser.add_argument("--max-accuracy-drop", type=float, default=MAX_ACCURACY_DROP,
                        help="refuse a result whose accuracy drop's 99%% lower bound is above (0.015)")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--layers", type=int, required=True, help="transformer layers the student keeps")
    parser.add_argument("--out", type=Path, help="default: artifacts/<name>-l<K>")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    out = args.out or ARTIFACTS_DIR / f"{args.artifact.name}-l{args.layers}"
    try:
        distill(args.artifact, args.layers, out, args.epochs, args.lr, args.seed, args.data, args.text_column,
                args.train_size, args.max_accuracy_drop)  # fmt: skip
    except CompressionError as exc:
        raise SystemExit(f"maas compress distill: {exc}") from None


if __name__ == "__main__":
    main()
