"""``maas import hf``: a user's own Hugging Face classifier becomes an artifact that answers as the model does."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from transformers import AutoConfig, ViTConfig, pipeline

from handlers.artifact import read_held_out, read_manifest
from handlers.self_check import SELF_CHECK_NAME
from handlers.tasks import load_pipeline
from scripts.cli import main as maas
from scripts.packaging.export import export
from scripts.training.import_hf import PROBE_TEXTS, ImportRefused, import_hf
from tests.fixtures.hf import LABELS

TEXTS = ["A gorgeous, witty film.", "Dull.", "It was fine, nothing more and nothing less, " * 30]


def reference_probabilities(checkpoint, texts: list[str]) -> np.ndarray:
    """transformers' own text-classification pipeline, one text at a time, probabilities in label order."""
    classify = pipeline("text-classification", model=str(checkpoint), tokenizer=str(checkpoint), top_k=None,
                        truncation=True, max_length=128)  # fmt: skip
    rows = []
    for text in texts:
        entries = classify([text])[0]  # a list in, one list of {label, score} per text out
        scores = {entry["label"]: entry["score"] for entry in entries}
        rows.append([scores[label] for label in LABELS.values()])
    return np.array(rows)


ARCHITECTURES = ["distilbert", "roberta", "electra", "multilabel"]


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_an_imported_model_answers_as_transformers_does(hf_checkpoints, hf_artifacts, architecture):
    artifact = hf_artifacts[architecture]
    manifest = read_manifest(artifact)
    assert manifest.labels == list(LABELS.values()) and manifest.preprocess["max_length"] == 128
    assert manifest.model["multi_label"] == (architecture == "multilabel") and (artifact / SELF_CHECK_NAME).is_file()
    assert manifest.serving.onnx_spinning == 1  # text models spin ONNX Runtime's threads (docs/settings.md)
    served = load_pipeline(artifact)
    answers = served.handle_json([{"text": TEXTS}])[0][1]
    got = np.array([[next(e["probability"] for e in a["top_k"] if e["label"] == lab) for lab in LABELS.values()]
                    for a in answers])  # fmt: skip
    np.testing.assert_allclose(got, reference_probabilities(hf_checkpoints[architecture], TEXTS), atol=1e-5)
    assert np.ptp(got, axis=0).max() > 1e-3  # the texts get different answers: the comparison means something
    if architecture == "multilabel":  # independent scores, and every label at 0.5 or more is named
        assert not np.allclose(got.sum(axis=1), 1)
        assert all(a["labels"] == [lab for lab, p in zip(LABELS.values(), row, strict=True) if p >= 0.5]
                   for a, row in zip(answers, got, strict=True))  # fmt: skip


def test_a_multi_label_export_is_verified_per_label_decision(hf_artifacts, tmp_path):
    out = export(hf_artifacts["multilabel"], "onnx", out=tmp_path / "onnx")
    report = read_manifest(out).model["verification"]
    assert report["passed"] and report["label_agreement"] == 1 and report["held_out_rows"] == len(PROBE_TEXTS)
    _, targets = read_held_out(out)
    assert all(isinstance(t, list) for t in targets)


def test_held_out_rows_from_a_csv_measure_accuracy(hf_checkpoints, tmp_path):
    rows = tmp_path / "held_out.csv"
    with open(rows, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows([[text, "positive" if i % 2 else "negative"] for i, text in enumerate(PROBE_TEXTS)])
    command = ["import", "hf", str(hf_checkpoints["distilbert"]), "--out", str(tmp_path / "a"), "--held-out", str(rows)]
    assert maas([*command, "--name", "reviews"]) == 0
    manifest = read_manifest(tmp_path / "a")
    assert manifest.name == "reviews" and 0 <= manifest.metrics["held_out_accuracy"] <= 1
    texts, targets = read_held_out(tmp_path / "a")
    assert texts == PROBE_TEXTS and targets[:2] == ["negative", "positive"]


def test_labels_can_be_renamed_and_placeholders_are_refused(hf_checkpoints, tmp_path):
    source = tmp_path / "placeholder"
    config = AutoConfig.from_pretrained(hf_checkpoints["roberta"])
    config.id2label, config.label2id = {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}, None
    for path in hf_checkpoints["roberta"].iterdir():
        (source / path.name).parent.mkdir(exist_ok=True)
        (source / path.name).write_bytes(path.read_bytes())
    config.save_pretrained(source)
    with pytest.raises(ImportRefused, match="placeholder names"):
        import_hf(source, tmp_path / "refused")
    import_hf(source, tmp_path / "renamed", labels=["bad", "so-so", "good"])
    assert read_manifest(tmp_path / "renamed").labels == ["bad", "so-so", "good"]


def test_refusals_name_what_is_wrong(hf_checkpoints, tmp_path):
    with pytest.raises(ImportRefused, match="no config.json: not a Hugging Face model directory"):
        import_hf(tmp_path, tmp_path / "out")
    vision = tmp_path / "vit"
    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(vision)
    with pytest.raises(ImportRefused, match="does not load as a sequence classifier"):
        import_hf(vision, tmp_path / "out")
    bad_rows = tmp_path / "rows.jsonl"
    bad_rows.write_text(json.dumps({"text": "ok", "label": "amazing"}) + "\n")
    with pytest.raises(ImportRefused, match=r"labels \['amazing'\] are not among the model's labels"):
        import_hf(hf_checkpoints["distilbert"], tmp_path / "out", held_out=bad_rows)
    with pytest.raises(ImportRefused, match="--labels names 2 labels; the model has 3 outputs"):
        import_hf(hf_checkpoints["distilbert"], tmp_path / "out", labels=["a", "b"])
    with pytest.raises(ImportRefused, match="exceeds the model's 128 positions"):
        import_hf(hf_checkpoints["distilbert"], tmp_path / "out", max_length=512)
    assert not (tmp_path / "out").exists()


def test_the_cli_lists_its_commands_and_refuses_unknown_ones(capsys):
    assert maas(["--help"]) == 0 and "maas import hf DIR --out ARTIFACT" in capsys.readouterr().out
    assert maas(["teleport"]) == 2 and "unknown command 'teleport'" in capsys.readouterr().err
