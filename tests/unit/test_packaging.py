"""Artifacts and the two packagers: checksums, archive layout, and a config.pbtxt that parses by schema."""

from __future__ import annotations

import json
import shutil
import tempfile
import zipfile

import pytest
import yaml
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from handlers.artifact import read_manifest
from handlers.settings import ServingSettings
from scripts.packaging.build import build, for_server


def test_tampered_artifact_is_refused(digits_artifact, tmp_path):
    copy = shutil.copytree(digits_artifact, tmp_path / "digits")
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(ValueError, match="model.safetensors does not match its checksum"):
        read_manifest(copy)
    with pytest.raises(ValueError, match="checksum"):
        build(copy, model_store=tmp_path / "store", triton_repository=None)


def test_mar_carries_runtime_code_artifact_and_batch_settings(digits_artifact, tmp_path):
    build(digits_artifact, model_store=tmp_path, triton_repository=None, fmt="eager")
    with zipfile.ZipFile(tmp_path / "digits.mar") as mar:
        names = set(mar.namelist())
        assert {"torchserve_entry.py", "handlers/pipeline.py", "handlers/tasks/image.py"} <= names
        assert {"artifact/pipeline.json", "artifact/model.safetensors", "MAR-INF/MANIFEST.json"} <= names
        assert not any("__pycache__" in n or n.startswith("scripts/") for n in names)
        config = yaml.safe_load(mar.read("model-config.yaml"))
        manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))
    assert config["batchSize"] == 32 and config["maxBatchDelay"] == 1
    assert manifest["model"]["handler"] == "torchserve_entry.py"


def test_triton_config_is_valid_by_schema(digits_artifact, tmp_path):
    build(digits_artifact, model_store=None, triton_repository=tmp_path, python_env=tmp_path / "env")
    config = text_format.Parse((tmp_path / "digits" / "config.pbtxt").read_text(), mc.ModelConfig())
    assert config.backend == "python" and config.max_batch_size == 32
    assert [(i.name, mc.DataType.Name(i.data_type), list(i.dims), i.optional) for i in config.input] == [
        ("IMAGE", "TYPE_STRING", [1], True),
        ("PIXELS", "TYPE_FP32", [8, 8], True),
    ]
    assert [o.name for o in config.output] == ["LABEL", "PROBABILITY", "PROBABILITIES"]
    assert config.output[2].dims == [10]
    assert config.HasField("dynamic_batching") and config.dynamic_batching.max_queue_delay_microseconds == 0
    assert not config.dynamic_batching.HasField("default_queue_policy")  # serving.deadline_ms is off by default
    assert config.parameters["EXECUTION_ENV_PATH"].string_value == str(tmp_path / "env")
    version = tmp_path / "digits" / "1"
    assert (version / "model.py").is_file() and (version / "handlers" / "triton_model.py").is_file()
    assert read_manifest(version / "artifact").name == "digits"


def test_per_server_settings_and_the_naive_build(digits_artifact, tmp_path):
    """The artifact's per-server section beats its generic settings; build overrides beat both."""
    build(digits_artifact, tmp_path / "store", tmp_path / "repo", name="naive", serving={"max_batch_size": 1})
    naive = text_format.Parse((tmp_path / "repo" / "naive" / "config.pbtxt").read_text(), mc.ModelConfig())
    assert naive.max_batch_size == 1 and not naive.HasField("dynamic_batching")
    with zipfile.ZipFile(tmp_path / "store" / "naive.mar") as mar:
        assert yaml.safe_load(mar.read("model-config.yaml"))["batchSize"] == 1

    two_settings = {"workers": 2, "deadline_ms": 5000}
    build(digits_artifact, tmp_path / "store", tmp_path / "repo", name="two", serving=two_settings)
    two = text_format.Parse((tmp_path / "repo" / "two" / "config.pbtxt").read_text(), mc.ModelConfig())
    policy = two.dynamic_batching.default_queue_policy  # 5 s queued at most, or less when a request asks
    assert (policy.timeout_action, policy.default_timeout_microseconds, policy.allow_timeout_override) == (
        mc.ModelQueuePolicy.REJECT, 5_000_000, True)  # fmt: skip
    assert [(g.kind, g.count) for g in two.instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, 2)]
    with zipfile.ZipFile(tmp_path / "store" / "two.mar") as mar:
        config = yaml.safe_load(mar.read("model-config.yaml"))
    assert config["minWorkers"] == config["maxWorkers"] == 2
    # the handlers run with the build's settings too: the packaged manifest carries them
    with zipfile.ZipFile(tmp_path / "store" / "two.mar") as mar:
        assert json.loads(mar.read("artifact/pipeline.json"))["serving"]["workers"] == 2
    assert read_manifest(tmp_path / "repo" / "two" / "1" / "artifact").serving.workers == 2
    assert read_manifest(digits_artifact).serving.workers == 1  # the artifact itself is untouched
    with pytest.raises(ValueError, match="serving.workers must be at least 1, not 0"):
        build(digits_artifact, tmp_path / "store", None, name="none", serving={"workers": 0})

    manifest = read_manifest(digits_artifact)
    manifest.serving = ServingSettings.from_dict({"max_batch_delay_ms": 5, "triton": {"max_batch_delay_ms": 2}})
    assert for_server(manifest, "triton", None).serving.max_batch_delay_ms == 2
    assert for_server(manifest, "torchserve", None).serving.max_batch_delay_ms == 5
    assert for_server(manifest, "triton", {"max_batch_delay_ms": 3}).serving.max_batch_delay_ms == 3


def test_an_artifact_named_like_its_model_in_the_temp_dir_survives_the_build(digits_artifact, tmp_path, monkeypatch):
    """torch-model-archiver stages in <temp dir>/<model name> and deletes it: an artifact kept there must survive."""
    artifact = shutil.copytree(digits_artifact, tmp_path / "digits")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    build(artifact, model_store=tmp_path / "store", triton_repository=None, fmt="eager")
    assert (artifact / "pipeline.json").is_file() and (tmp_path / "store" / "digits.mar").is_file()
    assert tempfile.gettempdir() == str(tmp_path)  # and the temp dir setting is restored
