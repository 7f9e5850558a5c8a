"""Distillation and pruning on the small text fixture: the mechanisms (which weights a student starts from, which
neurons pruning removes, the acceptance rule, the artifact written), not the accuracy figures."""

from __future__ import annotations

import json
import re

import pytest
import torch

from handlers.artifact import read_manifest
from handlers.tasks import load_pipeline
from scripts.compression.distill import distill, kept_layers, make_student
from scripts.compression.kd import CompressionError, load_teacher
from scripts.compression.prune import feed_forward_pairs, neuron_importance, prune, prune_feed_forward


def test_kept_layers_are_evenly_spaced_with_first_and_last():
    assert kept_layers(6, 3) == [0, 2, 5] and kept_layers(6, 5) == [0, 1, 2, 4, 5] and kept_layers(6, 1) == [0]
    for bad in (0, 6, 7):
        with pytest.raises(CompressionError, match="between 1 and 5"):
            kept_layers(6, bad)


def test_a_student_starts_from_the_teachers_layers_embeddings_and_head(text_artifact):
    _, teacher, _ = load_teacher(text_artifact)
    student = make_student(teacher, [0, 2, 5])
    assert student.config.num_hidden_layers == 3 and len(student.base_model.encoder.layer) == 3
    source = teacher.state_dict()
    for key, value in student.state_dict().items():  # student layer i is teacher layer [0, 2, 5][i]
        origin = re.sub(r"\.layer\.(\d+)\.", lambda m: f".layer.{[0, 2, 5][int(m.group(1))]}.", key)
        assert torch.equal(value, source[origin]), key


def test_distill_writes_an_artifact_that_serves_and_records_how_it_was_made(text_artifact, tmp_path):
    out = distill(text_artifact, layers=2, out=tmp_path / "student", epochs=1, train_size=64, max_accuracy_drop=1.0)
    manifest = read_manifest(tmp_path / "student")  # every file checksummed
    assert manifest.name == out.name == "student" and manifest.model["format"] == "eager"
    record = manifest.metrics["compression"]
    assert record["method"] == "distillation" and record["teacher_layers"] == [0, 5] and record["passed"]
    low, high = record["accuracy_drop_bounds"]
    assert low <= high and record["held_out_rows"] == 200 and 0 <= record["label_agreement"] <= 1
    assert json.loads((tmp_path / "student" / "config.json").read_text())["num_hidden_layers"] == 2
    assert (tmp_path / "student" / "self_check.json").is_file() and manifest.metrics["train_rows"] == 64
    status, answer = load_pipeline(tmp_path / "student").handle_json([{"text": "A warm, funny film."}])[0]
    assert status == 200 and answer["label"] in manifest.labels


def test_a_student_beyond_the_allowed_drop_is_refused_and_nothing_written(text_artifact, tmp_path):
    with pytest.raises(CompressionError, match="refused: held-out accuracy .* beyond the -1 allowed"):
        distill(text_artifact, layers=1, out=tmp_path / "student", epochs=1, train_size=32, max_accuracy_drop=-1.0)
    assert not (tmp_path / "student").exists()


def test_pruning_removes_the_neurons_that_add_nothing_and_keeps_the_answers(text_artifact, held_out_sentences):
    _, model, tokenizer = load_teacher(text_artifact)
    pairs = feed_forward_pairs(model)
    width = pairs[0][0].get_submodule(pairs[0][2]).in_features
    silenced = torch.arange(1, width, 2)  # every other neuron's output weights set to 0: they add nothing
    with torch.no_grad():
        for layer, _, down in pairs:
            layer.get_submodule(down).weight[:, silenced] = 0
    texts = held_out_sentences[0][:16]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        before = model(**batch).logits
    importance = neuron_importance(model, tokenizer, texts, max_length=128)
    assert all(float(scores[silenced].max()) == 0 and float(scores[0::2].min()) > 0 for scores in importance)
    assert prune_feed_forward(model, importance, keep=0.5) == width // 2 == model.config.intermediate_size
    with torch.inference_mode():
        after = model(**batch).logits
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    with pytest.raises(CompressionError, match="--keep must be between 0 and 1"):
        prune_feed_forward(model, importance, keep=1.5)


def test_prune_writes_a_smaller_dense_model_that_serves(text_artifact, tmp_path):
    prune(text_artifact, keep=0.25, out=tmp_path / "pruned", epochs=1, train_size=32, max_accuracy_drop=1.0,
          calibration_texts=32)  # fmt: skip
    config = json.loads((tmp_path / "pruned" / "config.json").read_text())
    teacher_config = json.loads((text_artifact / "config.json").read_text())
    assert config["intermediate_size"] == teacher_config["intermediate_size"] // 4
    record = read_manifest(tmp_path / "pruned").metrics["compression"]
    assert record["method"] == "feed-forward pruning" and record["kept_neurons"] == config["intermediate_size"]
    status, _ = load_pipeline(tmp_path / "pruned").handle_json([{"text": "Dull and far too long."}])[0]
    assert status == 200


def test_only_eager_text_classifiers_are_compressed(digits_artifact):
    with pytest.raises(CompressionError, match="compression takes text classifiers only"):
        load_teacher(digits_artifact)
