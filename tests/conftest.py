"""Shared fixtures: a digits artifact trained once per session with the real training script."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.train_digits import digits_split, train


@pytest.fixture(scope="session")
def digits_artifact(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("artifacts") / "digits"
    train(out, epochs=20, seed=0)
    return out


@pytest.fixture(scope="session")
def held_out_digits():
    """``(images [n, 8, 8] in 0..16, labels)`` never seen in training."""
    _, x_test, _, y_test = digits_split(seed=0)
    return x_test, y_test
