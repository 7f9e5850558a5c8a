"""Export acceptance in both directions: a small sample's noise passes, a broken export is refused.

Synthetic answers make the statistics exact and fast; tests/unit/test_formats.py runs the same checks on real
broken exports (perturbed weights, a dropped layer, swapped labels).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from scripts.packaging.acceptance import (
    CONFIDENCE,
    CRITERIA,
    ExportRejected,
    judge_classifier,
    judge_regressor,
    lower_bound_rate,
    upper_bound_rate,
)

INT8 = CRITERIA["onnx_int8"]
N = 200  # the test fixture's held-out size


def two_class_case(seed: int, n: int = N, accuracy: float = 0.78) -> tuple[np.ndarray, np.ndarray]:
    """Reference probabilities of class 1, kept clear of the boundary, and targets the reference gets
    ``accuracy`` of right."""
    rng = np.random.default_rng(seed)
    p1 = np.where(rng.random(n) < 0.5, rng.uniform(0.01, 0.4, n), rng.uniform(0.6, 0.99, n))
    predicted = (p1 > 0.5).astype(int)
    truth = np.where(rng.random(n) < accuracy, predicted, 1 - predicted)
    return p1, truth


def judge_probabilities(p1_ref: np.ndarray, p1_export: np.ndarray, truth: np.ndarray, criteria=INT8) -> dict:
    deviations = np.abs(p1_export - p1_ref)  # two classes: both probabilities move by the same amount
    return judge_classifier(deviations, criteria, truth, (p1_ref > 0.5).astype(int), (p1_export > 0.5).astype(int))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), flips=st.integers(2, 6), jitter=st.floats(0.0, 0.03))
def test_a_few_flipped_labels_near_the_boundary_pass(seed, flips, jitter):
    """int8 rounding on another CPU: every answer moves a little, 2-6 rows near the boundary change label, each
    of them from right to wrong (the worst case for accuracy: 3 points on 200 rows)."""
    p1, truth = two_class_case(seed)
    rng = np.random.default_rng(seed + 1)
    export = np.clip(p1 + rng.uniform(-jitter, jitter, N), 0, 1)
    right = np.flatnonzero((p1 > 0.5) == truth)[:flips]
    p1[right] = np.where(truth[right] == 1, 0.53, 0.47)  # the reference was right, narrowly
    export[right] = 1 - p1[right]  # the export is wrong, narrowly
    report = judge_probabilities(p1, export, truth)
    assert report["passed"] and report["metric_drop"] == pytest.approx(flips / N)
    assert report["label_agreement"] == pytest.approx(1 - flips / N)


def test_swapped_labels_are_refused():
    p1, truth = two_class_case(0)
    with pytest.raises(ExportRejected, match="labels disagree") as refused:
        judge_probabilities(p1, 1 - p1, truth)
    assert "accuracy dropped" in str(refused.value)


@pytest.mark.parametrize(
    "broken,message",
    [
        (lambda p: np.clip(p + 0.2, 0, 1), "99th percentile"),  # every answer shifted: a systematic error
        (lambda p: np.where(np.arange(N) == 7, 1 - p, p), "differ from the eager model's by up to"),  # one wild row
    ],
)
def test_shifted_answers_are_refused_even_without_label_changes(broken, message):
    p1, truth = two_class_case(1)
    with pytest.raises(ExportRejected, match=message):
        judge_probabilities(p1, broken(p1), truth)


def test_many_flips_near_the_boundary_are_refused():
    """30 of 200 labels changed (15%): too many to be rounding noise, however small each shift."""
    p1, truth = two_class_case(2)
    p1[:30] = 0.52
    export = p1.copy()
    export[:30] = 0.48
    with pytest.raises(ExportRejected, match="disagree with the eager model's on 30 of 200 rows"):
        judge_probabilities(p1, export, truth)


def test_fp32_formats_allow_only_float_noise():
    p1, truth = two_class_case(3)
    assert judge_probabilities(p1, p1 + 1e-6, truth, CRITERIA["onnx"])["passed"]
    with pytest.raises(ExportRejected, match="by up to 0.001"):
        judge_probabilities(p1, p1 + 1e-3, truth, CRITERIA["onnx"])


def test_regression_noise_passes_and_a_bias_is_refused():
    rng = np.random.default_rng(4)
    truth = rng.normal(150, 70, N)
    eager = truth + rng.normal(0, 50, N)  # R² about 0.5
    noisy = eager + rng.normal(0, 0.5, N)
    assert judge_regressor(np.full(N, 0.01), INT8, truth, eager, noisy)["passed"]
    with pytest.raises(ExportRejected, match="held-out r2 dropped"):
        judge_regressor(np.full(N, 0.01), INT8, truth, eager, eager + 30)


@pytest.mark.parametrize("events,n", [(0, 200), (3, 200), (6, 200), (30, 200), (16, 1000)])
def test_rate_bounds_are_the_exact_binomial_ones(events, n):
    """Clopper-Pearson: the one-sided bounds at 99% are the ends of scipy's exact two-sided 98% interval."""
    interval = stats.binomtest(events, n).proportion_ci(confidence_level=2 * CONFIDENCE - 1, method="exact")
    assert lower_bound_rate(events, n) == pytest.approx(interval.low, abs=1e-9)
    assert upper_bound_rate(events, n) == pytest.approx(interval.high, abs=1e-9)
