"""int8 quantization of an fp32 ONNX export: dynamic (``onnx_int8``) and static, calibrated (``onnx_int8_static``).

* **Dynamic**: weights quantized ahead of time, activations per batch at run time (their range measured on the batch
  itself). Needs no data.
* **Static (QDQ)**: activation ranges fixed ahead of time from calibration rows (the training data's, never the
  held-out rows the export is judged on), stored as QuantizeLinear/DequantizeLinear pairs that ONNX Runtime fuses
  into integer kernels. Saves the per-batch range pass, but a fixed range clips or coarsens activations that
  differ from the calibration rows'.

Static quantizes only the weight-bearing operators (MatMul with constant weights, Gemm, Conv, and Gather for
embedding tables); everything between them stays fp32. Measured on the shipped sentiment model (``maas bench int8``;
README, "Static int8"): quantizing every operator (ONNX Runtime's default) dropped held-out accuracy from 83.8% to
48.8%, and percentile calibration (clipping outliers) moved 5.7% of labels against min/max's 2.2%: BERT-family
activations carry a few large, meaningful outliers. Static was not faster than dynamic on the CPU measured (Intel,
AVX-512 VNNI).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx

from handlers.artifact import decode_row

CALIBRATION_ROWS = 256
CALIBRATION_BATCH = 32
# The feed-forward MatMuls of a transformer encoder layer, in the legacy exporter's node names for Hugging Face
# models (BERT, RoBERTa, ELECTRA, DeBERTa, XLM-R: intermediate/output.dense; DistilBERT: ffn.lin1/lin2).
FEED_FORWARD = re.compile(r"layer[./](\d+)/(?:intermediate/dense|output/dense|ffn/lin\d)/MatMul")
WEIGHT_OPS = ["MatMul", "Gemm", "Conv", "Gather"]


class CalibrationError(ValueError):
    """No usable calibration rows; the message says where to get them."""


def feed_forward_layers(onnx_path: Path) -> dict[str, int]:
    """The feed-forward MatMul nodes of a transformer export, with their encoder layer's index (none elsewhere)."""
    layers = {}
    for node in onnx.load(str(onnx_path), load_external_data=False).graph.node:
        match = FEED_FORWARD.search(node.name)
        if node.op_type == "MatMul" and match:
            layers[node.name] = int(match.group(1))
    return layers


def early_feed_forward(layers: dict[str, int]) -> list[str]:
    """Those of the first half of the encoder's layers."""
    count = max(layers.values(), default=-1) + 1
    return [name for name, layer in layers.items() if layer < (count + 1) // 2]


@contextmanager
def _quiet_root_logger():
    # The quantizer's advice (pre-process first; per-channel axes of LayerNorm weights it skips) goes to the root
    # logger. Measured on the text model, quant_pre_process gave the same answers and ran slower (224 vs 290 items/s
    # at batch 1), and the legacy export fails its symbolic shape inference.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_int8(source: Path, target: Path, keep_fp32: list[str] | None = None, **options) -> None:
    """Dynamic int8 quantization: per-channel 7-bit weights, activations quantized per batch at run time.

    Measured on the shipped sentiment model (README, "int8: what moves the answers"; ``maas bench int8``):
    per-channel scales (per-tensor moved 5% of labels); ``reduce_range`` (7-bit weights) so that CPUs without
    AVX-512 VNNI, whose u8 x s8 instruction saturates 16-bit sums, compute the same integers as CPUs with it; and
    the feed-forward blocks of the first half of the encoder kept in fp32 (``keep_fp32``, by default): their
    inputs carry the activation outliers that int8 activations round worst. ``options`` override
    ``quantize_dynamic``'s arguments (the recipes study).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    excluded = early_feed_forward(feed_forward_layers(source)) if keep_fp32 is None else keep_fp32
    with _quiet_root_logger():
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, nodes_to_exclude=excluded,
                         **({"per_channel": True, "reduce_range": True} | options))  # fmt: skip


def quantize_static_int8(
    source: Path, target: Path, batches: Sequence[dict[str, np.ndarray]], keep_fp32: list[str] | None = None, **options
) -> None:
    """Static int8 (QDQ): activation ranges from ``batches`` (the model's named inputs), min/max calibration.

    The weights recipe of ``quantize_int8`` (per-channel, 7-bit, the early feed-forward blocks in fp32 unless
    ``keep_fp32`` says otherwise). Only MatMuls with a constant weight are quantized: attention's activation x
    activation products stay fp32. ``options`` override ``quantize_static``'s arguments (``maas bench int8``).
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(batches)

        def get_next(self):
            return next(self.batches, None)

    excluded = early_feed_forward(feed_forward_layers(source)) if keep_fp32 is None else keep_fp32
    settings = {
        "quant_format": QuantFormat.QDQ,
        "activation_type": QuantType.QUInt8,
        "weight_type": QuantType.QInt8,
        "per_channel": True,
        "reduce_range": True,
        "calibrate_method": CalibrationMethod.MinMax,
        "op_types_to_quantize": WEIGHT_OPS,
        "extra_options": {"MatMulConstBOnly": True},
    }
    with _quiet_root_logger():
        quantize_static(str(source), str(target), Reader(), nodes_to_exclude=excluded, **(settings | options))


# ---- calibration rows ------------------------------------------------------------------------------------
def read_calibration_rows(path: Path) -> list:
    """Rows from a JSONL file, one ``{"input": ...}`` (or ``{"input_base64": ...}`` for bytes) per line: the
    format of an artifact's ``held_out.jsonl``, targets not needed."""
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"calibration file {path} does not exist")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            rows.append(decode_row(record))
        except (ValueError, KeyError, TypeError) as exc:
            raise CalibrationError(f'{path} line {number}: expected {{"input": ...}} or {{"input_base64": ...}} '
                                   f"({type(exc).__name__}: {exc})") from None  # fmt: skip
    if not rows:
        raise CalibrationError(f"{path} holds no rows")
    return rows


def training_rows(manifest, path: Path | None) -> list:
    """Calibration rows: ``path`` when given, else the bundled training sentences when the model was trained on
    them; a sample of ``CALIBRATION_ROWS``, seeded."""
    from scripts.training.text_data import bundled_training_texts

    if path is not None:
        rows = read_calibration_rows(path)
    elif (rows := bundled_training_texts(manifest.metrics)) is None:
        raise CalibrationError(
            "static int8 needs calibration rows from the model's training data: pass --calibration FILE (JSONL, "
            'one {"input": ...} per line, as in the artifact\'s held_out.jsonl) to maas export; maas build then '
            "reuses that export"
        )
    if len(rows) > CALIBRATION_ROWS:
        chosen = np.random.default_rng(0).choice(len(rows), CALIBRATION_ROWS, replace=False)
        rows = [rows[i] for i in sorted(chosen)]
    return rows


def calibration_batches(pipeline, rows: list, input_names) -> Iterator[dict[str, np.ndarray]]:
    """The rows preprocessed as the server would, in batches padded to one common shape (the histogram and
    min/max collectors stack every batch's activations)."""
    features = []
    for row in rows:
        try:
            features.append(pipeline.preprocess(row))
        except Exception as exc:  # the task's own input error, named with the row
            raise CalibrationError(f"calibration row {str(row)[:80]!r} refused: {exc}") from None
    whole = pipeline.collate(features)
    for start in range(0, len(rows), CALIBRATION_BATCH):
        yield {name: whole[name][start : start + CALIBRATION_BATCH].numpy() for name in input_names}
