"""Labelled movie-review sentences for the sentiment example, loaded without any model or data hub.

The 10,605 movie-review snippets rated -4..+4 by people (Hutto & Gilbert, "VADER", ICWSM 2014; the sentences come
from Pang & Lee's rotten-tomatoes snippets) ship inside the source distribution of ``vaderSentiment`` 3.3.2 (MIT).
It is fetched once through pip from the package registry, checked against a pinned SHA-256, and cached under
``artifacts/data/``. A sentence is positive when its mean rating is above zero, negative below; the 37 neutral
ones are dropped.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np

from scripts import ARTIFACTS_DIR

DATA_NAME = "movie-review snippets, Hutto & Gilbert ICWSM 2014"  # what a model trained on it records as its data
SDIST = "vaderSentiment-3.3.2.tar.gz"
SDIST_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
INNER_ARCHIVE = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
SNIPPETS = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
LABELS = ["negative", "positive"]


def fetch_sdist(cache_dir: Path = ARTIFACTS_DIR / "data") -> Path:
    path = cache_dir / SDIST
    if not path.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        print(f"fetching {SDIST} (its additional_resources hold the labelled sentences) with pip")
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
             "vaderSentiment==3.3.2", "-d", str(cache_dir)],
            check=True,
        )  # fmt: skip
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        raise ValueError(f"{path} has SHA-256 {digest}, expected {SDIST_SHA256}; delete it and retry")
    return path


def movie_snippets(cache_dir: Path = ARTIFACTS_DIR / "data") -> tuple[list[str], np.ndarray]:
    """All rated sentences and their binary labels (0 negative, 1 positive), in file order."""
    with tarfile.open(fetch_sdist(cache_dir)) as outer:
        inner_bytes = outer.extractfile(INNER_ARCHIVE).read()
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        lines = inner.extractfile(SNIPPETS).read().decode("utf-8").splitlines()
    texts, labels = [], []
    for line in lines:
        _, score, text = line.split("\t", 2)
        if float(score) != 0:
            texts.append(text.strip())
            labels.append(int(float(score) > 0))
    return texts, np.array(labels)


def sentiment_split(seed: int = 0, n_test: int = 1000, cache_dir: Path = ARTIFACTS_DIR / "data"):
    """A seeded shuffle: ``(train_texts, train_labels), (test_texts, test_labels)``; the test part is held out."""
    texts, labels = movie_snippets(cache_dir)
    order = np.random.default_rng(seed).permutation(len(texts))
    test, train = order[:n_test], order[n_test:]
    return ([texts[i] for i in train], labels[train]), ([texts[i] for i in test], labels[test])


def bundled_training_texts(metrics: dict) -> list[str] | None:
    """The training sentences of a model trained on this data (its manifest's ``metrics``: data name, seed and
    held-out size fix the split), all of them, the ones its training left unused included; ``None`` for another
    model."""
    if metrics.get("data") != DATA_NAME:
        return None
    (texts, _), _ = sentiment_split(metrics.get("seed", 0), metrics["held_out_rows"])
    return texts


class DataError(ValueError):
    """A user's data file cannot be used as it is; the message names the file, column or row at fault."""


def read_labelled_texts(path: Path, text_column: str = "text", label_column: str = "label") -> tuple[list[str], list]:
    """``(texts, labels)`` from a CSV (header row) or JSONL file. Labels are as written: a string, or for
    multi-label rows a JSON list or ``;``-separated names, split by the caller. Missing columns and empty texts are
    refused by name."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    if path.suffix == ".jsonl":
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    else:
        with open(path, newline="") as f:
            records = list(csv.DictReader(f))
    if not records:
        raise DataError(f"{path} holds no rows")
    missing = [c for c in (text_column, label_column) if c not in records[0]]
    if missing:
        raise DataError(f"{path}: no column {missing[0]!r}; columns: {sorted(records[0])}")
    empty = [i + 1 for i, r in enumerate(records) if not str(r[text_column] or "").strip()]
    if empty:
        raise DataError(f"{path}: the {text_column!r} column is empty in {len(empty)} row(s), first row {empty[0]}")
    return [str(r[text_column]) for r in records], [r[label_column] for r in records]
