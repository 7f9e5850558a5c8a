"""LitServe 0.2 serving ``user_model``, as its docs recommend: dynamic batching (``max_batch_size``,
``batch_timeout``), one worker on the CPU. Run: ``python litserve_app.py ARTIFACT PORT``."""

import sys

import litserve as ls
from user_model import load


class Classifier(ls.LitAPI):
    def setup(self, device):
        self.model = load(sys.argv[1])

    def decode_request(self, request):
        return request

    def predict(self, rows):
        return self.model.predict(rows)

    def encode_response(self, answer):
        return answer


if __name__ == "__main__":
    api = Classifier(max_batch_size=16, batch_timeout=0.001)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1)
    server.run(port=int(sys.argv[2]), generate_client_file=False, log_level="warning")
