"""What the OpenAI frontend needs of Triton: the language models of its repository, and their answers over gRPC.

Each choice of an OpenAI request is one request on one ``ModelStreamInfer`` stream, in the LLM-backend contract
(``text_input``, ``stream``, ``sampling_parameters``); the answers come back as the contract's dicts, the same the
TorchServe handler gets from its engine, so ``handlers/generation/openai_reply.py`` shapes both alike.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import tritonclient.grpc.aio as grpc_aio
from tritonclient.grpc import InferInput

from handlers.artifact import read_manifest
from handlers.errors import InternalError, ServingError
from handlers.generation.admission import overloaded_from
from handlers.generation.openai_api import Choice, ModelCard
from handlers.generation.service import TASK as TEXT_GENERATION
from scripts.serving.canary import CANARY_SUFFIX


def language_models(repository: Path) -> dict[str, ModelCard]:
    """Every language model in a Triton repository (its newest version), by served name, with its tokenizer."""
    from transformers import AutoConfig, AutoTokenizer  # the frontend's only heavy import, once at start

    cards = {}
    for config in sorted(Path(repository).glob("*/config.pbtxt")):
        if config.parent.name.endswith(CANARY_SUFFIX):  # a canary answers under its model's name
            continue
        versions = sorted((p for p in config.parent.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
        artifact = versions[-1] / "artifact" if versions else None
        if artifact is None or not (artifact / "pipeline.json").exists():
            continue
        manifest = read_manifest(artifact, verify=False)  # Triton's model verifies every file as it loads
        if manifest.task != TEXT_GENERATION:
            continue
        model_dir = artifact / manifest.model["dir"]
        limit = manifest.model.get("max_context")
        if limit is None:
            hf = AutoConfig.from_pretrained(model_dir)
            limit = getattr(hf, "max_position_embeddings", None) or getattr(hf, "n_positions", None)
        name = config.parent.name
        cards[name] = ModelCard(name, AutoTokenizer.from_pretrained(model_dir), int(limit),
                                manifest.serving.max_tokens_limit)  # fmt: skip
    return cards


class TritonFailed(ServingError):
    """Triton refused or failed a request (its message, which names what was wrong)."""

    http_status = 502


def _inputs(choice: Choice) -> list[InferInput]:
    sampling = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(choice.params).items()}
    strings = {"text_input": choice.prompt, "sampling_parameters": json.dumps(sampling)}
    values = {name: ("BYTES", np.array([text.encode()], dtype=np.object_)) for name, text in strings.items()}
    values["stream"] = ("BOOL", np.array([True]))
    inputs = []
    for name, (datatype, array) in values.items():
        tensor = InferInput(name, [1], datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def _answer(result) -> dict:
    def text(name: str) -> str | None:
        array = result.as_numpy(name)
        return None if array is None else array.reshape(-1)[0].decode()

    answer = {"text_output": text("text_output"), "finish_reason": text("finish_reason") or None}
    if answer["finish_reason"] is not None:  # only the last answer has the counts
        answer["usage"] = {name: int(result.as_numpy(name).reshape(-1)[0])
                           for name in ("prompt_tokens", "completion_tokens")}  # fmt: skip
    logprobs = text("logprobs")
    return answer | ({"logprobs": json.loads(logprobs)} if logprobs is not None else {})


class TritonStream:
    """The choices of one OpenAI request, streamed from Triton; ``cancel`` ends them there (the client left)."""

    def __init__(self, client: grpc_aio.InferenceServerClient, model: str, choices: list[Choice], headers: dict):
        async def requests():
            for index, choice in enumerate(choices):
                yield {"model_name": model, "inputs": _inputs(choice), "request_id": str(index)}

        self.count = len(choices)
        self._responses = client.stream_infer(requests(), headers=headers)

    async def answers(self) -> AsyncIterator[tuple[int, dict]]:
        """(choice index, answer) as Triton sends them, until every choice has its last answer."""
        ended = 0
        try:
            async for result, error in self._responses:
                if error is not None:
                    text = str(error.message() or error)
                    raise overloaded_from(text) or TritonFailed(text)  # the engine's 429 keeps its Retry-After
                answer = _answer(result)
                yield int(result.get_response().id), answer
                ended += answer["finish_reason"] is not None
                if ended == self.count:
                    return
        except ServingError:
            raise
        except Exception as exc:  # the stream broke (Triton stopped, the model was unloaded...)
            raise InternalError(f"the stream from Triton failed ({type(exc).__name__})") from exc
        finally:
            self.cancel()

    def cancel(self) -> None:
        self._responses.cancel()  # a finished call ignores it; a running one is cancelled on Triton (is_cancelled)
