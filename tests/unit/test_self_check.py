"""The self-check every artifact carries: run when a server loads the model, refusing answers that drifted."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

from handlers.artifact import read_manifest, write_artifact_manifest
from handlers.self_check import SELF_CHECK_NAME, SELF_CHECK_ROWS, SelfCheckFailed
from handlers.tasks import load_pipeline
from scripts.packaging.acceptance import CRITERIA


def rewrite(artifact, change) -> None:
    """Change the artifact's self-check record and re-checksum it, as a legitimate but different build would."""
    path = artifact / SELF_CHECK_NAME
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))
    write_artifact_manifest(artifact, read_manifest(artifact, verify=False))


def test_training_records_a_self_check_that_passes_at_load(digits_artifact, caplog):
    record = json.loads((digits_artifact / SELF_CHECK_NAME).read_text())
    assert record["format"] == "eager" and len(record["rows"]) == SELF_CHECK_ROWS
    assert record["tolerance"] == CRITERIA["onnx"].max_deviation
    with caplog.at_level(logging.INFO, logger="handlers.self_check"):
        load_pipeline(digits_artifact)
    assert "digits (eager) self-check on 8 held-out rows" in caplog.text and "passed" in caplog.text


def test_an_export_checks_itself_against_the_eager_answers(exported):
    artifact = exported("digits", "onnx_int8")
    record = json.loads((artifact / SELF_CHECK_NAME).read_text())
    assert record["format"] == "onnx_int8" and record["tolerance"] == CRITERIA["onnx_int8"].max_deviation
    reference, recorded = np.array(record["reference"]), np.array(record["recorded"])
    assert reference.shape == recorded.shape == (SELF_CHECK_ROWS, 10)
    assert np.abs(reference - recorded).max() <= record["tolerance"]


def test_answers_that_drifted_beyond_the_tolerance_refuse_to_load(digits_artifact, tmp_path, caplog):
    artifact = shutil.copytree(digits_artifact, tmp_path / "digits")

    def shifted(record):  # as if this machine computed other answers than the build machine's reference
        record["reference"][3] = list(np.roll(record["reference"][3], 1))

    rewrite(artifact, shifted)
    with caplog.at_level(logging.ERROR), pytest.raises(SelfCheckFailed) as refused:
        load_pipeline(artifact)
    assert "largest deviation from the reference answers" in str(refused.value)
    assert "(tolerance 0.0001)" in str(refused.value) and "refusing to serve" in str(refused.value)
    assert "FAILED" in caplog.text


def test_the_tolerance_travels_with_the_artifact(digits_artifact, tmp_path):
    artifact = shutil.copytree(digits_artifact, tmp_path / "digits")

    def shifted_a_little(record):
        record["reference"] = (np.array(record["reference"]) + 1e-3).tolist()

    rewrite(artifact, shifted_a_little)
    with pytest.raises(SelfCheckFailed):
        load_pipeline(artifact)
    rewrite(artifact, lambda record: record.update(tolerance=1e-2))
    load_pipeline(artifact)


def test_an_artifact_without_a_self_check_loads_with_a_warning(digits_artifact, tmp_path, caplog):
    artifact = shutil.copytree(digits_artifact, tmp_path / "digits")
    (artifact / SELF_CHECK_NAME).unlink()
    write_artifact_manifest(artifact, read_manifest(artifact, verify=False))
    with caplog.at_level(logging.WARNING):
        load_pipeline(artifact)
    assert "answers not checked at load" in caplog.text
