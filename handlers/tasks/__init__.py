"""Which pipeline class serves an artifact: the one registered for its ``task``, or the artifact's own.

Registered classes are imported lazily so that serving digits never imports transformers, and vice versa. An
artifact may carry its own pipeline file instead (``manifest.pipeline``: a user's model in one file, see the
README's "Serve your own model"); it is checksummed like every artifact file and imported from the artifact.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
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


def pipeline_class(manifest: Manifest, artifact_dir: Path) -> type[Pipeline]:
    if manifest.pipeline:
        return artifact_pipeline_class(manifest, Path(artifact_dir))
    if manifest.task not in TASKS:
        raise ValueError(f"unknown task {manifest.task!r}; known tasks: {sorted(TASKS)}, or ship a pipeline file")
    module_name, class_name = TASKS[manifest.task].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def artifact_pipeline_class(manifest: Manifest, artifact_dir: Path) -> type[Pipeline]:
    """Import the pipeline file the artifact carries (once per process) and return its class."""
    file, class_name = manifest.pipeline["file"], manifest.pipeline["class"]
    path = artifact_dir / file
    if file not in manifest.files:  # code the checksums do not cover is never imported
        raise ValueError(f"{path} is not among the artifact's checksummed files")
    # One module per file version (its checksum), so two artifacts' pipeline files never replace each other.
    module_name = f"maas_pipeline_{manifest.files[file][:16]}"
    module = sys.modules.get(module_name)
    if module is None:
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses and pickling look classes up through sys.modules
        spec.loader.exec_module(module)
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Pipeline)):
        raise ValueError(f"{path} has no Pipeline subclass named {class_name!r}")
    return cls


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
    pipeline = pipeline_class(manifest, artifact_dir)(manifest, Path(artifact_dir), device)
    if with_model:
        pipeline.model  # noqa: B018 - load now, so a broken model fails the server's model load, not a request
        if self_check:
            run_self_check(pipeline)
    return pipeline
