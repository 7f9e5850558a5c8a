"""When does an export answer like the model it came from? Criteria that account for sample size and noise.

An export is compared with the eager model on the same held-out rows (``scripts/packaging/export.py``). Four checks:

1. **Every row** is within ``max_deviation`` (largest |export - eager| over a row's class probabilities, or a
   regressor's standardised outputs): a broken export (wrong input order, baked-in shape, dropped layer) moves
   answers far beyond it.
2. **The 99th percentile** of the per-row deviation is within ``q99_deviation``: most answers barely move, so a
   systematic shift is caught even when no single row is extreme.
3. **Label agreement.** The export is refused only when the data show, at 99% one-sided confidence, that its
   labels disagree with the eager model's on more than ``max_disagreement`` of inputs: the exact
   (Clopper-Pearson) lower bound of the disagreement rate exceeds it. A 200-row sample with 2-6 flipped labels
   near the decision boundary (int8 rounding on another CPU) passes; a label swap or wrong weights (tens of
   percent) does not.
4. **Accuracy (R² for regressors) does not drop materially.** Paired comparison on the same rows: refused only
   when the 99% one-sided lower bound of the drop exceeds ``max_metric_drop``. For accuracy the bound is Agresti
   and Min's (2005) adjusted Wald interval for matched proportions (0.5 added to each cell of the 2x2 table of
   right/wrong); for R² a normal bound on the mean per-row change in squared error, scaled by the total sum of
   squares.

Checks 3 and 4 refuse on evidence, not on point estimates, so a small held-out set cannot fail on noise; their
confidence bounds are in the report, so a user sees how much a small set can and cannot tell.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from handlers.self_check import FP32_TOLERANCE

CONFIDENCE = 0.99  # one-sided, for checks 3 and 4


@dataclass(frozen=True)
class Criteria:
    max_deviation: float
    q99_deviation: float
    max_disagreement: float
    max_metric_drop: float


# fp32 exports differ from eager only by operation order (measured: < 2e-6): the tolerance an eager artifact's
# self-check uses too. int8 figures: see the README's "Model formats" (measured on the shipped models, with and
# without AVX-512 VNNI).
FP32 = Criteria(max_deviation=FP32_TOLERANCE, q99_deviation=FP32_TOLERANCE, max_disagreement=0.01, max_metric_drop=0.01)
INT8 = Criteria(max_deviation=0.3, q99_deviation=0.15, max_disagreement=0.05, max_metric_drop=0.01)
CRITERIA = {"torchscript": FP32, "onnx": FP32, "onnx_int8": INT8, "onnx_int8_static": INT8}


class ExportRejected(RuntimeError):
    """The exported model does not behave like the eager one."""


def lower_bound_rate(events: int, n: int) -> float:
    """Exact (Clopper-Pearson) one-sided lower confidence bound of a binomial rate."""
    return 0.0 if events == 0 else float(stats.beta.ppf(1 - CONFIDENCE, events, n - events + 1))


def upper_bound_rate(events: int, n: int) -> float:
    return 1.0 if events == n else float(stats.beta.ppf(CONFIDENCE, events + 1, n - events))


def accuracy_interval(right: int, n: int) -> tuple[float, float]:
    """Exact (Clopper-Pearson) two-sided 95% interval of an accuracy: the reports' error bars."""
    low = 0.0 if right == 0 else stats.beta.ppf(0.025, right, n - right + 1)
    high = 1.0 if right == n else stats.beta.ppf(0.975, right + 1, n - right)
    return float(low), float(high)


def accuracy_drop_bounds(eager_right: np.ndarray, export_right: np.ndarray) -> tuple[float, float, float]:
    """Paired accuracy drop (eager - export) and its one-sided bounds (Agresti & Min 2005 adjusted Wald)."""
    n = len(eager_right)
    lost = int(np.sum(eager_right & ~export_right))  # rows the export gets wrong that eager got right
    gained = int(np.sum(~eager_right & export_right))
    p_lost, p_gained = (lost + 0.5) / (n + 2), (gained + 0.5) / (n + 2)
    drop = p_lost - p_gained
    se = math.sqrt(max(p_lost + p_gained - drop**2, 0.0) / (n + 2))
    z = stats.norm.ppf(CONFIDENCE)
    return (lost - gained) / n, drop - z * se, drop + z * se


def r2_drop_bounds(truth: np.ndarray, eager: np.ndarray, export: np.ndarray) -> tuple[float, float, float]:
    """R² drop (eager - export) and its one-sided bounds, from the per-row change in squared error."""
    total = float(((truth - truth.mean()) ** 2).sum())
    change = (truth - export) ** 2 - (truth - eager) ** 2  # per row; sum(change) / total is the R² drop
    drop = float(change.sum()) / total
    se = float(change.std(ddof=1)) * math.sqrt(len(change)) / total if len(change) > 1 else 0.0
    z = stats.norm.ppf(CONFIDENCE)
    return drop, drop - z * se, drop + z * se


def judge_classifier(
    deviations: np.ndarray, criteria: Criteria, truth: np.ndarray, eager: np.ndarray, export: np.ndarray
) -> dict:
    """``deviations``: per row; ``truth``, ``eager``, ``export``: one decision each (the target class and each
    model's top class; for a multi-label model, one yes/no per row and label)."""
    eager_right, export_right = eager == truth, export == truth
    bounds = accuracy_drop_bounds(eager_right, export_right)
    before, after = float(eager_right.mean()), float(export_right.mean())
    return judge(deviations, criteria, "accuracy", before, after, bounds, (int(np.sum(eager != export)), len(eager)))


def judge_regressor(
    deviations: np.ndarray, criteria: Criteria, truth: np.ndarray, eager: np.ndarray, export: np.ndarray
) -> dict:
    """``truth``, ``eager``, ``export``: target values and each model's predictions, in target units."""
    return judge(deviations, criteria, "r2", r2(truth, eager), r2(truth, export), r2_drop_bounds(truth, eager, export))


def r2(truth: np.ndarray, predicted: np.ndarray) -> float:
    return float(1 - ((truth - predicted) ** 2).sum() / ((truth - truth.mean()) ** 2).sum())


def judge(
    deviations: np.ndarray,
    criteria: Criteria,
    metric: str,
    before: float,
    after: float,
    drop_bounds: tuple[float, float, float],
    disagreements: tuple[int, int] | None = None,
) -> dict:
    """Apply the four checks; return the report (``passed`` and every figure), or raise ``ExportRejected``."""
    n = len(deviations)
    drop, drop_low, drop_high = drop_bounds
    report = {
        "criteria": asdict(criteria),
        "confidence": CONFIDENCE,
        "held_out_rows": n,
        "max_abs_deviation": float(f"{deviations.max():.3g}"),
        "q99_abs_deviation": float(f"{np.quantile(deviations, 0.99):.3g}"),
        "metric": metric,
        "eager": round(before, 4),
        "export": round(after, 4),
        "metric_drop": round(drop, 4),
        "metric_drop_bounds": [round(drop_low, 4), round(drop_high, 4)],
    }
    failures = []
    if report["max_abs_deviation"] > criteria.max_deviation:
        failures.append(f"the export's outputs differ from the eager model's by up to {deviations.max():.3g}, "
                        f"beyond this format's tolerance {criteria.max_deviation:g}")  # fmt: skip
    if report["q99_abs_deviation"] > criteria.q99_deviation:
        failures.append(f"the 99th percentile of |export - eager| is {report['q99_abs_deviation']:g}, beyond "
                        f"{criteria.q99_deviation:g}")  # fmt: skip
    if disagreements is not None:
        changed, decisions = disagreements
        low, high = lower_bound_rate(changed, decisions), upper_bound_rate(changed, decisions)
        report |= {"label_agreement": round(1 - changed / decisions, 4), "disagreement_bounds": [round(low, 4),
                   round(high, 4)]}  # fmt: skip
        if low > criteria.max_disagreement:
            unit = "rows" if decisions == n else "row-label decisions"
            failures.append(f"the export's labels disagree with the eager model's on {changed} of {decisions} {unit}: "
                            f"at least {low:.1%} of inputs at {CONFIDENCE:.0%} confidence, beyond "
                            f"{criteria.max_disagreement:.0%}")  # fmt: skip
    if drop_low > criteria.max_metric_drop:
        failures.append(f"held-out {metric} dropped from {before:.4f} to {after:.4f}: by at least {drop_low:.4f} "
                        f"at {CONFIDENCE:.0%} confidence, beyond {criteria.max_metric_drop:g}")  # fmt: skip
    report["passed"] = not failures
    if failures:
        raise ExportRejected("; ".join(failures))
    return report
