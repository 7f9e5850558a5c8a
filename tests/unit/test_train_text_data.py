"""``maas train text --data``: fine-tune on the user's own labelled file; bad data refused by name."""

from __future__ import annotations

import csv

import pytest

from handlers.artifact import read_held_out, read_manifest
from handlers.tasks import load_pipeline
from scripts.cli import main as maas
from scripts.training.text_data import DataError
from scripts.training.train_text import train

WORDS = {"praise": "wonderful superb delightful", "complaint": "awful broken useless", "question": "how when why"}


def write_reviews(path, rows: int = 60, label_of=lambda i: list(WORDS)[i % 3]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["review", "kind"])
        for i in range(rows):
            label = label_of(i)
            writer.writerow([f"message {i}: {WORDS[label]} {i % 7}", label])


def test_training_on_a_csv_of_ones_own(hf_checkpoints, tmp_path):
    data = tmp_path / "reviews.csv"
    write_reviews(data)
    base = str(hf_checkpoints["distilbert"])  # a tiny encoder of the user's: seconds, not minutes
    command = ["train", "text", "--data", str(data), "--text-column", "review", "--label-column", "kind",
               "--out", str(tmp_path / "kinds"), "--base", base, "--epochs", "3"]  # fmt: skip
    assert maas(command) == 0
    manifest = read_manifest(tmp_path / "kinds")
    assert manifest.name == "kinds" and manifest.labels == sorted(WORDS) and manifest.metrics["train_rows"] == 48
    texts, targets = read_held_out(tmp_path / "kinds")
    assert len(texts) == 12 and set(targets) <= set(WORDS)
    answers = load_pipeline(tmp_path / "kinds").handle_json([{"text": texts}])[0][1]
    assert 0 <= manifest.metrics["held_out_accuracy"] <= 1 and len(answers) == 12


@pytest.mark.parametrize(
    "rows,columns,message",
    [
        (lambda i: "praise", ("review", "kind"), "one label only"),
        (lambda i: list(WORDS)[i % 3], ("text", "kind"), "no column 'text'"),
    ],
)
def test_bad_data_is_refused_by_name(tmp_path, rows, columns, message):
    data = tmp_path / "reviews.csv"
    write_reviews(data, label_of=rows)
    with pytest.raises(DataError, match=message):
        train(tmp_path / "out", data=data, text_column=columns[0], label_column=columns[1])


def test_an_empty_text_is_refused_with_its_row(tmp_path):
    data = tmp_path / "reviews.jsonl"
    data.write_text('{"text": "fine", "label": "a"}\n{"text": "  ", "label": "b"}\n')
    with pytest.raises(DataError, match="empty in 1 row\\(s\\), first row 2"):
        train(tmp_path / "out", data=data)
