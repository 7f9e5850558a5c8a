"""KServe's Python ``ModelServer`` (the kserve SDK) serving ``user_model`` through the v1 protocol,
``{"instances": [row, ...]}``. The SDK has no in-process batching (KServe batches in its agent sidecar, outside a
single process). Run: ``python kserve_app.py ARTIFACT PORT``."""

import sys

import kserve
from user_model import load


class Classifier(kserve.Model):
    def __init__(self, name: str, artifact: str):
        super().__init__(name)
        self.model = load(artifact)
        self.ready = True

    def predict(self, payload: dict, headers: dict | None = None) -> dict:
        return {"predictions": self.model.predict(payload["instances"])}


if __name__ == "__main__":
    model = Classifier("model", sys.argv[1])
    kserve.ModelServer(http_port=int(sys.argv[2]), grpc_port=int(sys.argv[3]), workers=1,
                       enable_latency_logging=False).start([model])  # fmt: skip
