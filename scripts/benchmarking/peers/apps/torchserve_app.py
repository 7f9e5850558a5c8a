"""TorchServe with a minimal custom handler around ``user_model``: TorchServe's stock ``image_classifier`` and
``text_classifier`` need torchvision and torchtext, which do not install beside torch 2.13's CPU build, so a user
subclasses ``BaseHandler`` as TorchServe's docs show. Archived with the artifact's files as extra files."""

import json
from pathlib import Path

from ts.torch_handler.base_handler import BaseHandler
from user_model import load


class Classifier(BaseHandler):
    def initialize(self, context):
        self.model = load(Path(context.system_properties["model_dir"]))
        self.initialized = True

    def handle(self, data, context):
        bodies = [item.get("body") or item.get("data") for item in data]
        # TorchServe's worker has already parsed an application/json body into a dict
        return self.model.predict([b if isinstance(b, dict) else json.loads(b) for b in bodies])
