"""Explanations: Integrated Gradients per row, for text, image and tabular pipelines (``core.py``, ``tasks.py``).

Captum is imported only when a model is first asked for an explanation, so serving predictions never loads it.
"""

from __future__ import annotations

from pathlib import Path

from handlers.artifact import MANIFEST_NAME, read_manifest
from handlers.explain.core import (
    EXPLAIN_HEADERS,
    OUTPUT,
    Explainer,
    ExplanationUnavailable,
    is_true,
)
from handlers.pipeline import Pipeline

__all__ = [
    "EXPLAIN_HEADERS",
    "OUTPUT",
    "ExplanationUnavailable",
    "Explainer",
    "explainer_for",
    "explainable",
    "load_explainer",
    "SOURCE_DIR",
    "is_true",
]
SOURCE_DIR = "explain"  # beside a served export's ``artifact/``: the eager artifact it was exported from

EXPLAINERS = {  # the pipeline class an explainer serves -> the explainer, by module path (imported on demand)
    "TextClassifier": "TextExplainer",
    "ImageClassifier": "ImageExplainer",
    "TabularPipeline": "TabularExplainer",
}


def explainer_for(pipeline: Pipeline) -> Explainer:
    """The pipeline's explainer; ``ExplanationUnavailable`` names why there is none."""
    for cls in type(pipeline).__mro__:
        if cls.__name__ in EXPLAINERS and cls.__module__.startswith("handlers.tasks"):
            from handlers.explain import tasks

            return getattr(tasks, EXPLAINERS[cls.__name__])(pipeline)
    raise ExplanationUnavailable(f"{pipeline.manifest.name}: no explainer for its task {pipeline.manifest.task!r} "
                                 "(text, image and tabular pipelines have one)")  # fmt: skip


def explainable(task: str, model_format: str) -> bool:
    """Whether a build should add an explainer: a text, image or tabular task stored with its gradients."""
    return task in ("text_classification", "image_classification", "tabular_classification",
                    "tabular_regression") and model_format in ("eager", "torchscript")  # fmt: skip


def load_explainer(model_dir: Path, device: str = "cpu", pipeline: Pipeline | None = None) -> Explainer:
    """The explainer of a served model directory (``<dir>/artifact``): on the eager artifact the build put beside
    an export (``<dir>/explain``, the weights the export was verified against), else on the served model itself."""
    from handlers.tasks import load_pipeline

    source = Path(model_dir) / SOURCE_DIR
    if not (source / MANIFEST_NAME).exists():
        return explainer_for(pipeline or load_pipeline(Path(model_dir) / "artifact", device=device))
    served = read_manifest(Path(model_dir) / "artifact", without_model=True).model
    explainer = explainer_for(load_pipeline(source, device=device))
    weights = explainer.pipeline.manifest.model["file"]
    verified = served.get("exported_from") == explainer.pipeline.manifest.files[weights]
    explainer.described = (f"the eager weights ({weights}) the served {served.get('format')} model was "
                           f"{'exported from and verified against' if verified else 'built beside'}")  # fmt: skip
    return explainer
