"""Tables as they come: text (category) columns and empty cells, with what serving does about each."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from handlers.artifact import read_held_out, read_manifest
from handlers.tasks import load_pipeline
from scripts.training.train_tabular import main

SOILS = ["clay", "loam", "sand"]


def write_gardens(path, rows: int = 200, empty_every: int = 0) -> None:
    """Yield depends on soil (a text column), water and a flag; every ``empty_every``-th row misses its water."""
    rng = np.random.default_rng(0)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["soil", "water (l)", "mulched", "yield"])
        for i in range(rows):
            soil, water, mulched = SOILS[i % 3], round(float(rng.uniform(1, 10)), 2), bool(rng.random() < 0.5)
            good = (soil == "loam") + (water > 5) + mulched + rng.normal(0, 0.3) > 1.5
            writer.writerow(
                [soil, "" if empty_every and i % empty_every == 0 else water, mulched, "good" if good else "poor"]
            )


def train(tmp_path, *extra):
    data = tmp_path / "gardens.csv"
    write_gardens(data, empty_every=10 if "--impute" in extra else 0)
    main(["--csv", str(data), "--target", "yield", "--out", str(tmp_path / "gardens"), "--epochs", "60", *extra])
    return tmp_path / "gardens"


def test_a_text_column_becomes_a_category_learned_on_the_training_rows(tmp_path):
    artifact = train(tmp_path)
    features = read_manifest(artifact).preprocess["features"]
    soil = next(f for f in features if f["name"] == "soil")
    assert soil["type"] == "category" and soil["categories"] == SOILS and "impute" not in soil
    pipeline = load_pipeline(artifact)
    row = {"soil": "loam", "water (l)": 7.5, "mulched": True}
    answers = pipeline.handle_json([{"features": row}, {"features": row | {"soil": "peat"}},
                                    {"features": row | {"soil": 3}}, {"features": row | {"soil": None}}])  # fmt: skip
    assert [status for status, _ in answers] == [200, 200, 400, 400]  # an unseen category is answered
    assert "takes one of its categories" in answers[2][1]["error"]["message"]
    assert "'soil' is missing" in answers[3][1]["error"]["message"]
    by_name = pipeline.handle_json([{"features": row}])[0][1]
    by_index = pipeline.handle_tensors([{"FEATURES": np.array([[1, 7.5, 1]], dtype=np.float32)}])[0]  # loam = 1
    assert by_index["PROBABILITY"][0, 0] == pytest.approx(by_name["probability"], abs=1e-6)
    config = json.loads(type(pipeline).config_parameters(read_manifest(artifact))["feature_categories"])
    assert config == {"soil": SOILS}
    assert read_manifest(artifact).metrics["held_out_accuracy"] > 0.7  # the category carries signal


def test_empty_cells_are_refused_without_impute(tmp_path):
    data = tmp_path / "gardens.csv"
    write_gardens(data, empty_every=10)
    with pytest.raises(SystemExit, match="column 'water \\(l\\)' is empty; .* or train with --impute"):
        main(["--csv", str(data), "--target", "yield", "--out", str(tmp_path / "x")])


def test_impute_fills_training_cells_and_missing_features_at_serving(tmp_path):
    artifact = train(tmp_path, "--impute")
    features = {f["name"]: f for f in read_manifest(artifact).preprocess["features"]}
    assert features["soil"]["impute"] in SOILS and isinstance(features["mulched"]["impute"], float)
    rows, _ = read_held_out(artifact)
    assert any(row[1] is None for row in rows)  # held-out rows keep their gaps: serving imputes them
    pipeline = load_pipeline(artifact)
    row = {"soil": "clay", "mulched": False}
    water = features["water (l)"]["impute"]
    missing, filled = pipeline.handle_json([{"features": row}, {"features": row | {"water (l)": water}}])
    assert missing[0] == 200 and missing[1]["probability"] == pytest.approx(filled[1]["probability"], abs=1e-6)
    nan = pipeline.handle_tensors([{"FEATURES": np.array([[0, np.nan, 0]], dtype=np.float32)}])[0]  # NaN = missing
    assert nan["PROBABILITY"][0, 0] == pytest.approx(missing[1]["probability"], abs=1e-6)
