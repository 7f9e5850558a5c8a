"""The int8 recipes study (scripts/benchmarking/int8_recipes.py) on the digits fixture: every recipe measured on the
same rows."""

from __future__ import annotations

import shutil

from scripts.benchmarking.int8_recipes import RECIPES, cpu_flags, study


def test_every_recipe_is_measured_against_fp32(digits_artifact, tmp_path):
    artifact = shutil.copytree(digits_artifact, tmp_path / "digits")  # the fp32 export is written beside it
    # Static recipes calibrate on held-out rows here (the fixture keeps no training rows): the mechanism, not accuracy.
    results = study(artifact, speed_rows=20, calibration=artifact / "held_out.jsonl")
    assert [r["recipe"] for r in results] == ["fp32 (onnx)", *RECIPES]
    fp32, *int8 = results
    assert fp32["max_shift"] == 0 and fp32["label_agreement"] == 1
    for result in int8:
        assert 0 <= result["q99_shift"] <= result["max_shift"] <= 1 and result["mb"] < fp32["mb"]
        assert result["b1_items_s"] > 0 and result["b32_items_s"] > 0
    assert cpu_flags()
