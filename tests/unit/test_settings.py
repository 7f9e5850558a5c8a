"""The typed serving settings: one set of defaults, refused values named, per-server views."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from handlers.artifact import MANIFEST_NAME, Manifest, read_manifest
from handlers.settings import ServingSettings
from scripts.packaging.torchserve_archive import torchserve_model_config


def test_defaults_are_the_same_for_both_servers():
    settings = ServingSettings()
    for server in ("torchserve", "triton"):
        view = settings.for_server(server)
        assert (view.max_batch_size, view.max_batch_delay_ms, view.workers) == (32, 0.0, 1)
    # TorchServe's own 0 ms delay means "wait ~100 ms": its config gets the least it honours instead
    config = torchserve_model_config(Manifest("m", "t", {}, serving={}))
    assert (config["batchSize"], config["maxBatchDelay"], config["minWorkers"]) == (32, 1, 1)


def test_server_sections_and_overrides_apply_in_order():
    settings = ServingSettings.from_dict({"max_batch_size": 8, "triton": {"max_batch_size": 4, "workers": 2}})
    assert settings.for_server("torchserve").max_batch_size == 8
    triton = settings.for_server("triton")
    assert (triton.max_batch_size, triton.workers, triton.triton) == (4, 2, {})
    assert settings.for_server("triton", {"max_batch_size": 1}).max_batch_size == 1


@pytest.mark.parametrize(
    ("serving", "named"),
    [
        ({"max_batch": 8}, "unknown setting max_batch"),
        ({"triton": {"max_batch": 8}}, "serving.triton: unknown setting max_batch"),
        ({"triton": {"triton": {}}}, "serving.triton: unknown setting triton"),
        ({"workers": 0}, "serving.workers must be at least 1, not 0"),
        ({"max_batch_size": "32"}, "serving.max_batch_size must be a number, not '32'"),
        ({"max_batch_size": 2.5}, "serving.max_batch_size must be a whole number"),
        ({"top_k": True}, "serving.top_k must be a number"),
        ({"threshold": 1.5}, "serving.threshold must be between 0 and 1"),
        ({"onnx_spinning": 2}, "serving.onnx_spinning must be 0 or 1, not 2"),
        ({"static_batching": 3}, "serving.static_batching must be 0 or 1, not 3"),
        ({"bind_cores": 2}, "serving.bind_cores must be 0 or 1, not 2"),
        ({"max_batch_delay_ms": -1}, "serving.max_batch_delay_ms must be at least 0"),
        ({"torchserve": {"response_timeout_s": 0}}, "serving.response_timeout_s must be at least 1"),
        ({"torchserve": 3}, "serving.torchserve must be an object"),
    ],
)
def test_a_bad_setting_is_refused_by_name(serving, named):
    with pytest.raises(ValueError, match=named.replace("(", r"\(")):
        ServingSettings.from_dict(serving)


def test_overrides_are_checked_too():
    with pytest.raises(ValueError, match="serving overrides: unknown setting batch"):
        ServingSettings().for_server("torchserve", {"batch": 1})
    with pytest.raises(ValueError, match="serving.max_batch_size must be at least 1"):
        ServingSettings().for_server("triton", {"max_batch_size": 0})


def test_the_manifest_is_checked_when_read(tmp_path):
    manifest = Manifest("m", "t", {}, serving={"max_batch_size": 16})
    assert manifest.serving.max_batch_size == 16 and manifest.serving.top_k == 3
    data = asdict(manifest)
    assert data["serving"]["max_batch_size"] == 16  # written whole: every setting the servers run with
    data["serving"]["max_batch_sise"] = 4
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(ValueError, match=f"{MANIFEST_NAME}: serving: unknown setting max_batch_sise"):
        read_manifest(tmp_path)
