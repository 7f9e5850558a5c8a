"""The tabular task in-process: training from a CSV, the served answers, and every bad-feature path."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from sklearn.metrics import r2_score
from tritonclient.grpc import model_config_pb2 as mc

from handlers.artifact import read_manifest
from handlers.nets import build_module
from handlers.tasks import load_pipeline
from scripts.packaging.build import build
from scripts.training.tabular_data import load_csv
from scripts.training.train_tabular import main

MINIMUM = {"breast_cancer": 0.95, "wine": 0.9, "diabetes": 0.3, "plants": 0.9}  # held-out accuracy or R^2


@pytest.fixture(scope="module")
def pipelines(tabular_cases):
    return {name: load_pipeline(case.artifact) for name, case in tabular_cases.items()}


def named(pipeline, vector) -> dict:
    return dict(zip(pipeline.schema.names, vector, strict=True))


# ---- predictions ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["breast_cancer", "wine", "diabetes", "plants"])
def test_served_pipeline_reproduces_the_training_metric(tabular_cases, pipelines, name):
    """Held-out rows through the serving path (validation, stored standardisation) score what training recorded."""
    x, y = tabular_cases[name].held_out()
    pipeline = pipelines[name]
    requests = [{"FEATURES": x[i : i + 32].astype(np.float32)} for i in range(0, len(x), 32)]
    outputs = pipeline.handle_tensors(requests)
    metrics = pipeline.manifest.metrics
    if "held_out_accuracy" in metrics:
        predicted = np.concatenate([o["PROBABILITIES"].argmax(1) for o in outputs])
        score = metrics["held_out_accuracy"]
        assert np.mean(predicted == y) == pytest.approx(score, abs=1e-4)
    else:
        score = metrics["held_out_r2"]
        assert r2_score(y, np.concatenate([o["VALUE"][:, 0] for o in outputs])) == pytest.approx(score, abs=1e-4)
    assert score >= MINIMUM[name]


def test_named_ordered_and_several_rows_agree(tabular_cases, pipelines):
    pipeline, (x, _) = pipelines["breast_cancer"], tabular_cases["breast_cancer"].held_out()
    rows = x[:3].tolist()
    shuffled = dict(reversed(list(named(pipeline, rows[0]).items())))  # names in any order
    answers = pipeline.handle_json(
        [{"features": named(pipeline, rows[0])}, {"features": rows[0]}, {"features": shuffled}, {"instances": rows}]
    )
    assert [status for status, _ in answers] == [200] * 4
    assert answers[0][1] == answers[1][1] == answers[2][1] == answers[3][1][0]
    body = answers[0][1]
    assert set(body) == {"label", "probability", "top_k"} and body["label"] in ("malignant", "benign")
    assert sum(entry["probability"] for entry in body["top_k"]) == pytest.approx(1.0, abs=1e-6)
    assert len(answers[3][1]) == 3
    json.dumps(answers)


def test_regression_answers_a_value_per_row(tabular_cases, pipelines):
    pipeline, (x, _) = pipelines["diabetes"], tabular_cases["diabetes"].held_out()
    (status, one), (_, several) = pipeline.handle_json([{"features": x[0].tolist()}, {"instances": x[:4].tolist()}])
    assert status == 200 and set(one) == {"value"} and isinstance(one["value"], float)
    assert [v["value"] for v in several][0] == one["value"] and len(several) == 4
    (tensors,) = pipeline.handle_tensors([{"FEATURES": x[:4].astype(np.float32)}])
    assert tensors["VALUE"].shape == (4, 1) and tensors["VALUE"].dtype == np.float32
    assert tensors["VALUE"][:, 0].tolist() == [v["value"] for v in several]  # the same float32 numbers


def test_csv_features_keep_their_types(pipelines):
    pipeline = pipelines["plants"]
    assert pipeline.schema.names == ["petal length (cm)", "leaf count", "flowering", "height, m"]
    assert pipeline.schema.types == ["float", "int", "bool", "float"]
    assert pipeline.labels == ["fern", "moss", "palm"] and pipeline.manifest.model["config"]["hidden"] == []
    row = {"petal length (cm)": 6, "leaf count": 8, "flowering": True, "height, m": 1.5}
    (status, body), (_, as_numbers) = pipeline.handle_json([{"features": row}, {"features": [6, 8, 1, 1.5]}])
    assert status == 200 and body["label"] == "palm" and as_numbers == body


# ---- bad features -----------------------------------------------------------------------------------------
def breast_cancer_row(pipeline, x, **changes) -> dict:
    row = named(pipeline, x[0].tolist())
    for key, value in changes.items():
        key = key.replace("_", " ")
        if value is ...:
            del row[key]
        else:
            row[key] = value
    return row


@pytest.mark.parametrize(
    "changes,fragment",
    [
        ({"mean_radius": ...}, "feature 'mean radius' is missing"),
        ({"mean_radius": None}, "feature 'mean radius' is missing"),
        ({"mean_radius": ..., "worst_area": ...}, "features 'mean radius', 'worst area' are missing"),
        ({"foo": 1.0}, "unknown feature 'foo'"),
        ({"mean_area": "abc"}, "feature 'mean area' must be a number, got 'abc'"),
        ({"mean_area": [1.0]}, "feature 'mean area' must be a number, got [1.0]"),
        ({"mean_area": True}, "feature 'mean area' must be a number, got true"),
        ({"mean_area": float("nan")}, "feature 'mean area' is NaN or infinite"),
        ({"mean_area": float("-inf")}, "feature 'mean area' is NaN or infinite"),
        ({"mean_area": 1e39}, "feature 'mean area' is NaN or infinite (or beyond the float32 range)"),
        ({"mean_area": 10**400}, "feature 'mean area' is NaN or infinite"),
    ],
)
def test_a_bad_named_feature_is_a_400_naming_it(tabular_cases, pipelines, changes, fragment):
    pipeline, (x, _) = pipelines["breast_cancer"], tabular_cases["breast_cancer"].held_out()
    good = {"features": x[1].tolist()}
    answers = pipeline.handle_json([good, {"features": breast_cancer_row(pipeline, x, **changes)}, good])
    assert answers[1][0] == 400 and fragment in answers[1][1]["error"]["message"]
    assert answers[0][0] == answers[2][0] == 200


@pytest.mark.parametrize(
    "body,status,fragment",
    [
        ({"features": [1.0] * 29}, 400, "expected 30 features, got 29"),
        ({"features": [1.0] * 29 + ["x"]}, 400, "feature 'worst fractal dimension' must be a number, got 'x'"),
        ({"instances": [[1.0] * 30, [1.0] * 30 + [2.0]]}, 400, "row 1: expected 30 features, got 31"),
        ({"instances": [[1.0] * 30] * 33}, 413, "at most 32 are accepted"),
        ({"instances": []}, 400, "no rows"),
        ({"instances": {"a": 1}}, 400, '"instances" must be a list'),
        ({"features": "1,2,3"}, 400, "a row must be an object of named features or a list of 30 values"),
        ({"features": [1.0] * 30, "extra": 1}, 400, '{"instances": [row, ...]}'),
        ([[1.0] * 30], 400, '{"features": {"name": value, ...}}'),
        (b'{"features": [NaN' + b", 1" * 29 + b"]}", 400, "feature 'mean radius' is NaN or infinite"),
        (b'{"features": [', 400, "not valid JSON"),
    ],
)
def test_bad_bodies_name_the_problem(tabular_cases, pipelines, body, status, fragment):
    pipeline, (x, _) = pipelines["breast_cancer"], tabular_cases["breast_cancer"].held_out()
    good = {"instances": x[:2].tolist()}
    answers = pipeline.handle_json([good, body, good])
    assert answers[1][0] == status and fragment in answers[1][1]["error"]["message"]
    assert answers[0][0] == answers[2][0] == 200


@pytest.mark.parametrize(
    "value,fragment",
    [
        ({"leaf count": 2.5}, "feature 'leaf count' must be a whole number, got 2.5"),
        ({"flowering": 2}, "feature 'flowering' must be true, false, 0 or 1, got 2"),
        ({"flowering": "true"}, "feature 'flowering' must be a number, got 'true'"),
    ],
)
def test_int_and_bool_features_are_checked(pipelines, value, fragment):
    row = {"petal length (cm)": 2.0, "leaf count": 12, "flowering": False, "height, m": 1.0}
    ((status, body),) = pipelines["plants"].handle_json([{"features": row | value}])
    assert status == 400 and fragment in body["error"]["message"]


def test_triton_rows_are_validated_and_named(tabular_cases, pipelines):
    x = tabular_cases["plants"].held_out()[0][:4].astype(np.float32)
    nan, half, two = x.copy(), x.copy(), x.copy()
    nan[2, 0], half[1, 1], two[3, 2] = np.nan, 0.5, 2.0
    good, *bad = pipelines["plants"].handle_tensors(
        [{"FEATURES": x}, {"FEATURES": nan}, {"FEATURES": half}, {"FEATURES": two}, {"PIXELS": x}]
    )
    assert good["PROBABILITIES"].shape == (4, 3) and good["LABEL"].shape == (4, 1)
    assert [error.message for error in bad] == [
        "row 2: feature 'petal length (cm)' is NaN or infinite (or beyond the float32 range)",
        "row 1: feature 'leaf count' must be a whole number, got 0.5",
        "row 3: feature 'flowering' must be true, false, 0 or 1, got 2",
        "send the input FEATURES (FP32 [n, n_features], in schema order)",
    ]
    assert {error.http_status for error in bad} == {400}


# ---- packaging and architectures ---------------------------------------------------------------------------
@pytest.mark.parametrize("name,outputs", [("wine", ["LABEL", "PROBABILITY", "PROBABILITIES"]), ("diabetes", ["VALUE"])])
def test_triton_config_publishes_the_feature_schema(tabular_cases, tmp_path, name, outputs):
    artifact = tabular_cases[name].artifact
    build(artifact, model_store=None, triton_repository=tmp_path, python_env=tmp_path / "env")
    config = text_format.Parse((tmp_path / name / "config.pbtxt").read_text(), mc.ModelConfig())
    manifest = read_manifest(artifact)
    names = [f["name"] for f in manifest.preprocess["features"]]
    assert [(i.name, mc.DataType.Name(i.data_type), list(i.dims)) for i in config.input] == [
        ("FEATURES", "TYPE_FP32", [len(names)])
    ]
    assert [o.name for o in config.output] == outputs
    assert json.loads(config.parameters["feature_names"].string_value) == names
    assert json.loads(config.parameters["feature_types"].string_value) == ["float"] * len(names)
    assert config.parameters["EXECUTION_ENV_PATH"].string_value == str(tmp_path / "env")


def test_logistic_regression_is_one_weight_vector_with_two_class_probabilities():
    torch.manual_seed(0)
    model = build_module("logistic_regression", {"n_features": 4})
    x = torch.randn(5, 4)
    probabilities = torch.softmax(model(x), dim=1)
    assert sum(p.numel() for p in model.parameters()) == 5
    torch.testing.assert_close(probabilities[:, 1], torch.sigmoid(model.layers(x))[:, 0])
    mlp = build_module("feed_forward", {"n_features": 4, "n_outputs": 3, "hidden": [8, 8], "dropout": 0.5})
    assert mlp.eval()(x).shape == (5, 3)


# ---- training from a CSV -----------------------------------------------------------------------------------
def write(tmp_path, text: str):
    path = tmp_path / "table.csv"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text,options,message",
    [
        ("a,b,y\n1,,0\n2,3,1\n", [], ":2: column 'b' is empty"),
        ("a,b,y\n1,,0\n2,,1\n", ["--impute"], "column 'b' has no values"),
        ("a,b,y\n1,2,\n2,3,1\n", ["--impute"], ":2: column 'y' is empty; fill or drop missing values first"),
        ("a,b,z\n1,2,0\n", [], "no column 'y'"),
        ("a,y\n1,x\n2,y\n", ["--task", "regression"], "regression needs a numeric target"),
        ("a,y\n1,x\n2,y\n3,z\n", ["--model", "logistic"], "logistic regression needs 2 classes"),
    ],
)
def test_csv_problems_are_refused_naming_the_column(tmp_path, text, options, message):
    args = ["--csv", str(write(tmp_path, text)), "--target", "y", *options, "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match=re.escape(message)):
        main(args)


def test_the_task_is_inferred_from_the_target(tmp_path):
    rows = "\n".join(f"{i},{i % 2 == 0},{i % 3},{i * 1.5}" for i in range(40))
    path = write(tmp_path, "x,flag,k,v\n" + rows + "\n")
    assert load_csv(path, "k").task == "classification" and load_csv(path, "k").labels == ["0", "1", "2"]
    assert load_csv(path, "v").task == "regression" and load_csv(path, "x").task == "regression"
    manifest = main(["--csv", str(path), "--target", "v", "--out", str(tmp_path / "v"), "--epochs", "3"])
    assert manifest.task == "tabular_regression" and manifest.labels is None
    assert set(manifest.preprocess["target"]) == {"name", "mean", "std"} and "held_out_r2" in manifest.metrics
    assert [f["type"] for f in manifest.preprocess["features"]] == ["int", "bool", "int"]
