"""BentoML 1.4 serving ``user_model`` with adaptive batching (``batchable=True``), one worker, no access log.
The artifact comes from ``MAAS_PEER_ARTIFACT``. Run: ``bentoml serve bentoml_app:Classifier --port PORT``."""

import os

import bentoml
from user_model import load


@bentoml.service(workers=1, logging={"access": {"enabled": False}})  # access lines cost ~10% at this size
class Classifier:
    def __init__(self):
        self.model = load(os.environ["MAAS_PEER_ARTIFACT"])

    @bentoml.api(batchable=True, max_batch_size=16, max_latency_ms=1000)
    def predict(self, rows: list[dict]) -> list[dict]:
        return self.model.predict(rows)
