"""What a language model's build writes: TorchServe in continuous-batching mode, Triton decoupled, a one-token probe."""

from __future__ import annotations

import json
import zipfile

import yaml
from google.protobuf import text_format
from transformers import AutoModelForCausalLM, AutoTokenizer
from tritonclient.grpc import model_config_pb2 as mc

from scripts.packaging.build import build
from scripts.training.lm_artifact import write_lm_artifact
from tests.unit.lm_fixtures import tiny_lm


def test_a_language_model_builds_for_continuous_batching_on_both_servers(tmp_path):
    source = tiny_lm("gpt2", tmp_path / "checkpoint")
    model, tokenizer = AutoModelForCausalLM.from_pretrained(source), AutoTokenizer.from_pretrained(source)
    write_lm_artifact(tmp_path / "lm", model, tokenizer, "lm", ["the model"], {}, max_tokens=4)
    build(tmp_path / "lm", model_store=tmp_path / "store", triton_repository=tmp_path / "repo")

    with zipfile.ZipFile(tmp_path / "store" / "lm.mar") as archive:
        config = yaml.safe_load(archive.read("model-config.yaml"))
        entry = archive.read("torchserve_entry.py").decode()
        probe = json.loads(archive.read("probe.json"))
    assert config["continuousBatching"] is True and config["batchSize"] == 16 and config["maxBatchDelay"] >= 1
    assert "GenerationHandler" in entry
    assert probe["torchserve"]["json"] == {"text_input": "the model", "max_tokens": 1, "temperature": 0}

    triton = text_format.Parse((tmp_path / "repo" / "lm" / "config.pbtxt").read_text(), mc.ModelConfig())
    assert triton.model_transaction_policy.decoupled and triton.max_batch_size == 0
    assert not triton.HasField("dynamic_batching") and triton.instance_group[0].count == 1
    assert [i.name for i in triton.input] == ["text_input", "stream", "sampling_parameters", "exclude_input_in_output"]
    assert [i.optional for i in triton.input] == [False, True, True, True]
    assert [o.name for o in triton.output][0] == "text_output"
    assert "triton_generation" in (tmp_path / "repo" / "lm" / "1" / "model.py").read_text()
    version_probe = json.loads((tmp_path / "repo" / "lm" / "1" / "probe.json").read_text())
    assert version_probe["triton_generate"]["parameters"] == {"max_tokens": 1, "temperature": 0}
