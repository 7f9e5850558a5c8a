"""A pipeline written in one file outside this repository's packages: carried by the artifact, served from it."""

from __future__ import annotations

import json
import shutil
import zipfile

import pytest

from handlers.artifact import read_manifest, write_artifact_manifest
from handlers.tasks import load_pipeline
from scripts.packaging.build import build


def test_the_artifact_carries_the_pipeline_file(user_pipeline_artifact):
    manifest = read_manifest(user_pipeline_artifact)
    assert manifest.pipeline == {"file": "pipeline.py", "class": "CharGRUClassifier"}
    assert "pipeline.py" in manifest.files  # checksummed like the weights
    pipeline = load_pipeline(user_pipeline_artifact)  # runs the self-check too
    assert type(pipeline).__name__ == "CharGRUClassifier" and type(pipeline).__module__.startswith("maas_pipeline_")


def test_it_answers_and_refuses_per_request(user_pipeline_artifact):
    pipeline = load_pipeline(user_pipeline_artifact)
    answers = pipeline.handle_json([{"text": ["Great fun.", "A bore."]}, {"text": ""}, b"\xff", "Fine."])
    assert [status for status, _ in answers] == [200, 400, 400, 200]
    assert [a["label"] in ("negative", "positive") for a in answers[0][1]] == [True, True]
    assert "empty" in answers[1][1]["error"]["message"] and "UTF-8" in answers[2][1]["error"]["message"]
    tensors = pipeline.handle_tensors([pipeline.client_tensors(["Great fun.", "A bore."])])
    assert tensors[0]["PROBABILITIES"].shape == (2, 2)


def test_build_packs_the_file_and_a_changed_file_is_refused(user_pipeline_artifact, tmp_path):
    build(user_pipeline_artifact, model_store=tmp_path / "store", triton_repository=tmp_path / "repo")
    with zipfile.ZipFile(tmp_path / "store" / "char_gru.mar") as mar:
        assert "artifact/pipeline.py" in mar.namelist()
    assert (tmp_path / "repo" / "char_gru" / "1" / "artifact" / "pipeline.py").is_file()
    config = (tmp_path / "repo" / "char_gru" / "config.pbtxt").read_text()
    assert '"TEXT"' in config and '"PROBABILITIES"' in config

    tampered = shutil.copytree(user_pipeline_artifact, tmp_path / "tampered")
    (tampered / "pipeline.py").write_text((tampered / "pipeline.py").read_text() + "\nprint('injected')\n")
    with pytest.raises(ValueError, match="pipeline.py does not match its checksum"):
        load_pipeline(tampered)


def test_a_missing_class_is_named(user_pipeline_artifact, tmp_path):
    renamed = shutil.copytree(user_pipeline_artifact, tmp_path / "renamed")
    manifest = json.loads((renamed / "pipeline.json").read_text())
    manifest["pipeline"]["class"] = "NoSuchPipeline"
    (renamed / "pipeline.json").write_text(json.dumps(manifest))
    write_artifact_manifest(renamed, read_manifest(renamed, verify=False))
    with pytest.raises(ValueError, match="has no Pipeline subclass named 'NoSuchPipeline'"):
        load_pipeline(renamed)
