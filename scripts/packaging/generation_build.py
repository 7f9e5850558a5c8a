"""What differs when the artifact is a language model: each server's entry point and model configuration.

* TorchServe: ``continuousBatching: true`` (``TORCHSERVE_CONFIG``), so each ``handle`` call is one decoding step
  over every request in flight (``handlers/torchserve_generation.py``); ``batchSize`` is the most sequences decoding
  at once, and ``maxBatchDelay`` applies only when nothing runs (while sequences decode, newcomers join at the next
  step); ``responseTimeout`` bounds each chunk, not the whole stream.
* Triton: a decoupled Python model (``model_transaction_policy { decoupled: true }``) with the tensors of Triton's
  own LLM backends, no dynamic batching (the engine batches, step by step), ``max_batch_size: 0``
  (``handlers/triton_generation.py``).
"""

from __future__ import annotations

from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from handlers.artifact import Manifest
from scripts.packaging.runtime import entry_point_source

TEXT_GENERATION = "text_generation"
TORCHSERVE_ENTRY = entry_point_source(
    "TorchServe entry point of a maas-handlers language model: the handler lives in this archive's handlers package.",
    "from handlers.torchserve_generation import GenerationHandler  # noqa: E402\n\n\n"
    "class ArchiveHandler(GenerationHandler):\n"
    '    """The one class the TorchServe loader looks for in the entry module."""',
)
TRITON_ENTRY = entry_point_source(
    "Triton entry point of a maas-handlers language model: the adapter lives in this version's handlers package.",
    "from handlers.triton_generation import TritonPythonModel  # noqa: E402,F401",
)
TORCHSERVE_CONFIG = {"continuousBatching": True}
# name, data type, optional (inputs) -- Triton's vLLM backend contract, plus what an OpenAI answer needs
INPUTS = [("text_input", "TYPE_STRING", False), ("stream", "TYPE_BOOL", True),
          ("sampling_parameters", "TYPE_STRING", True), ("exclude_input_in_output", "TYPE_BOOL", True)]  # fmt: skip
# ``logprobs`` (JSON, OpenAI's chat shape) only in the answers of a request that asked for them
OUTPUTS = [("text_output", "TYPE_STRING"), ("finish_reason", "TYPE_STRING"), ("prompt_tokens", "TYPE_INT32"),
           ("completion_tokens", "TYPE_INT32"), ("logprobs", "TYPE_STRING")]  # fmt: skip


def is_language_model(manifest: Manifest) -> bool:
    return manifest.task == TEXT_GENERATION


def triton_config(manifest: Manifest, name: str, python_env: Path) -> mc.ModelConfig:
    config = mc.ModelConfig(name=name, backend="python", max_batch_size=0)
    for tensor, data_type, optional in INPUTS:
        config.input.append(mc.ModelInput(name=tensor, data_type=mc.DataType.Value(data_type), dims=[1],
                                          optional=optional))  # fmt: skip
    for tensor, data_type in OUTPUTS:
        config.output.append(mc.ModelOutput(name=tensor, data_type=mc.DataType.Value(data_type), dims=[-1]))
    config.model_transaction_policy.decoupled = True
    # One engine per model: its running batch is where requests are batched. More instances would each hold a
    # model copy and split the batch.
    config.instance_group.append(mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_CPU, count=1))
    config.parameters["EXECUTION_ENV_PATH"].string_value = str(python_env)
    return config
