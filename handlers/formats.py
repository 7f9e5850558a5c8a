"""Model formats: how an artifact stores its network and what runs it.

===============  ======================  =============================================================
format           file                    run by
===============  ======================  =============================================================
``eager``        safetensors weights      the task's own ``torch.nn.Module`` (what training wrote)
``torchscript``  ``model.pt``             ``torch.jit.load`` (traced, frozen)
``onnx``         ``model.onnx``           ONNX Runtime, fp32
``onnx_int8``    ``model.int8.onnx``      ONNX Runtime, weights quantized to int8 (dynamic quantization)
``onnx_int8_static`` ``model.qdq.onnx``   ONNX Runtime, weights and activations int8 (static, calibrated)
===============  ======================  =============================================================

Every runner takes the collated batch, a dict of named tensors in the task's ``MODEL_INPUTS`` order, and returns
the network's one output tensor (logits, or a regressor's standardised values). Exports are written and checked
against the eager model by ``scripts/packaging/export.py``; the manifest's ``model.format`` says which one
an artifact holds.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

FORMATS = ("eager", "torchscript", "onnx", "onnx_int8", "onnx_int8_static")
FILES = {"torchscript": "model.pt", "onnx": "model.onnx", "onnx_int8": "model.int8.onnx",
         "onnx_int8_static": "model.qdq.onnx"}  # fmt: skip
OUTPUT_NAME = "output"


class TorchRunner:
    """An eager or TorchScript module called with the batch's tensors, in input order."""

    def __init__(self, module: Callable, input_names: list[str]):
        self.module, self.input_names = module, input_names

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.inference_mode():
            return self.module(*(batch[name] for name in self.input_names))


class OnnxRunner:
    """An ONNX Runtime session; torch tensors in and out, so the pipeline's postprocessing is unchanged."""

    def __init__(self, path: Path, device: str, input_names: list[str] | None = None, threads: int = 0,
                 spinning: bool = False):  # fmt: skip
        import onnxruntime as ort  # only artifacts in ONNX formats need it

        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else None
        options = ort.SessionOptions()
        options.log_severity_level = 3  # warnings about unused initializers would flood server logs
        # No busy-waiting between runs unless serving.onnx_spinning asks: a server shares its cores with its front
        # end, other models and clients (A/Bs in docs/settings.md: spinning wins for int8 text, whose manifests ask
        # for it, and loses for the tiny digits model under load).
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        options.intra_op_num_threads = threads  # 0: ONNX Runtime's default, one per physical core
        self.session = ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
        # The task's input names, in order, fed to the session's inputs in order: exports made here use the same
        # names; an imported ONNX file may call its image input "input" or "x".
        session_inputs = [i.name for i in self.session.get_inputs()]
        names = input_names or session_inputs
        if len(names) != len(session_inputs):
            raise ValueError(f"{path} takes inputs {session_inputs}; the task feeds {names}")
        self.inputs = dict(zip(session_inputs, names, strict=True))

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        feeds = {name: np.ascontiguousarray(batch[task].cpu().numpy()) for name, task in self.inputs.items()}
        return torch.from_numpy(self.session.run(None, feeds)[0])


def model_format(model: dict) -> str:
    fmt = model.get("format", "eager")
    if fmt not in FORMATS:
        raise ValueError(f"unknown model format {fmt!r}; known formats: {', '.join(FORMATS)}")
    return fmt


def load_runner(
    model: dict,
    artifact_dir: Path,
    device: str,
    input_names: list[str],
    eager: Callable[[], torch.nn.Module],
    threads: int = 0,
    spinning: bool = False,
) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    """The runner for the manifest's ``model`` section; ``eager`` builds the task's module for eager artifacts.
    ``threads``: intra-op threads of one forward pass (the manifest's ``serving.threads``; 0 = the runtime's
    default, every core). PyTorch's is per process: it is set for the whole worker or stub. ``spinning``: ONNX
    Runtime's threads spin between runs (``serving.onnx_spinning``)."""
    if threads < 0:
        raise ValueError(f"serving.threads must be 0 (the runtime's default) or more, not {threads}")
    fmt = model_format(model)
    if threads and fmt in ("eager", "torchscript"):
        torch.set_num_threads(threads)
    if fmt == "eager":
        return TorchRunner(eager().to(device).eval(), input_names)
    path = Path(artifact_dir) / model["file"]
    if fmt == "torchscript":
        return TorchRunner(torch.jit.load(str(path), map_location=device).eval(), input_names)
    return OnnxRunner(path, device, input_names, threads, spinning)
