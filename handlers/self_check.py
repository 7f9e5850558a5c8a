"""Self-check at load: does this model answer, on this machine, as it did where it was built?

An export's answers depend on the CPU it runs on: ONNX Runtime picks other int8 kernels with and without AVX-512
VNNI, and float reductions differ by instruction set. So a check made at build time does not protect what is
served. Every artifact carries ``self_check.json``: a few held-out rows, the reference answers of the eager model
(recorded by training or by ``scripts/packaging/export.py``) and the tolerance of its format. ``load_pipeline``
runs the rows as one batch when a server loads the model and refuses to load, naming the largest deviation and the
tolerance, when the answers drift beyond it. The outcome goes to the server log either way.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from handlers.artifact import decode_row, encode_row

if TYPE_CHECKING:
    from handlers.pipeline import Pipeline

SELF_CHECK_NAME = "self_check.json"
SELF_CHECK_ROWS = 8
# The tolerance of an fp32 model against the eager one: an eager artifact's own self-check (training) and an fp32
# export's acceptance (scripts/packaging/acceptance.py). fp32 differs from eager only by operation order (< 2e-6).
FP32_TOLERANCE = 1e-4
log = logging.getLogger(__name__)


class SelfCheckFailed(RuntimeError):
    """The model's answers on this machine are not the ones it was verified with."""


def answers(pipeline: Pipeline, rows: list) -> np.ndarray:
    """The rows' outputs as one batch (int8 scales activations per batch, so the batch is always the same)."""
    return pipeline.comparable(pipeline.forward(pipeline.collate([pipeline.preprocess(row) for row in rows])))


def record_self_check(
    directory: Path, candidate: Pipeline, rows: list, tolerance: float, reference: Pipeline | None = None
) -> None:
    """Write ``self_check.json``: the first held-out ``rows``, the ``reference`` (eager) model's answers and the
    candidate's own (the same model when ``reference`` is None: an eager artifact checks against itself)."""
    rows = rows[:SELF_CHECK_ROWS]
    recorded = answers(candidate, rows)
    record = {
        "format": candidate.manifest.model.get("format", "eager"),
        "tolerance": tolerance,
        "rows": [encode_row(row) for row in rows],
        "reference": (answers(reference, rows) if reference else recorded).tolist(),
        "recorded": recorded.tolist(),  # this format's answers on the build machine: drift is logged, not judged
    }
    (Path(directory) / SELF_CHECK_NAME).write_text(json.dumps(record) + "\n")


def run_self_check(pipeline: Pipeline) -> dict | None:
    """Run the artifact's self-check; raise ``SelfCheckFailed`` on drift. ``None`` when the artifact has none."""
    name = pipeline.manifest.name
    if SELF_CHECK_NAME not in pipeline.manifest.files:
        log.warning("%s: no %s in the artifact (made by an older version): answers not checked at load; rebuild "
                    "it to get one", name, SELF_CHECK_NAME)  # fmt: skip
        return None
    record = json.loads((pipeline.artifact_dir / SELF_CHECK_NAME).read_text())
    start = time.perf_counter()
    got = answers(pipeline, [decode_row(row) for row in record["rows"]])
    result = {
        "rows": len(record["rows"]),
        "max_deviation": float(np.abs(got - np.asarray(record["reference"])).max()),
        "drift_since_build": float(np.abs(got - np.asarray(record["recorded"])).max()),
        "tolerance": float(record["tolerance"]),
        "ms": round((time.perf_counter() - start) * 1e3, 1),
    }
    summary = (f"{name} ({record['format']}) self-check on {result['rows']} held-out rows: largest deviation from the "
               f"reference answers {result['max_deviation']:.3g} (tolerance {result['tolerance']:g}), "
               f"{result['drift_since_build']:.3g} from this format's answers on the build machine, "
               f"{result['ms']} ms")  # fmt: skip
    if result["max_deviation"] > result["tolerance"]:
        log.error("%s: FAILED, refusing to serve", summary)
        raise SelfCheckFailed(f"{summary}: beyond the tolerance on this machine, refusing to serve")
    log.info("%s: passed", summary)
    return result
