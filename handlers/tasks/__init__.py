"""Task registry: the manifest's ``task`` names the pipeline class that serves an artifact.

Classes are imported lazily so that serving digits never imports transformers, and vice versa.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from handlers.artifact import Manifest, read_manifest
from handlers.pipeline import Pipeline
from handlers.self_check import run_self_check

TASKS = {
    "image_classification": "handlers.tasks.image:ImageClassifier",
    "text_classification": "handlers.tasks.text:TextClassifier",
    "tabular_classification": "handlers.tasks.tabular:TabularClassifier",
    "tabular_regression": "handlers.tasks.tabular:TabularRegressor",
}


def pipeline_class(task: str) -> type[Pipeline]:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known tasks: {sorted(TASKS)}")
    module_name, class_name = TASKS[task].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def load_pipeline(
    artifact_dir: Path,
    device: str = "cpu",
    manifest: Manifest | None = None,
    with_model: bool = True,
    self_check: bool = True,
) -> Pipeline:
    """Verify the artifact's checksums and build its pipeline, ready to serve.

    ``with_model=False`` skips loading the network: the pre- and postprocessing stages of a Triton ensemble.
    ``self_check`` runs the artifact's self-check (``handlers.self_check``) and raises ``SelfCheckFailed`` when the
    model's answers on this machine drift beyond its tolerance; build tools that are making the record turn it off.
    """
    manifest = manifest or read_manifest(artifact_dir, without_model=not with_model)
    pipeline = pipeline_class(manifest.task)(manifest, Path(artifact_dir), device)
    if with_model:
        pipeline.model  # noqa: B018 - load now, so a broken model fails the server's model load, not a request
        if self_check:
            run_self_check(pipeline)
    return pipeline
