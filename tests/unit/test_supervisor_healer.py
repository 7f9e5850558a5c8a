"""The Triton supervisor's decisions, with the server's answers faked: which models it reloads, and when."""

from __future__ import annotations

import itertools

import pytest

import scripts.serving.triton_supervisor as supervisor
from scripts.serving.health import ModelHealth

DEAD = "InferenceServerException: [500] Stub process 'digits_0_0' is not healthy."


class FakeHealer(supervisor.Healer):
    """A Healer without a server: probes answer from a script, reloads are recorded."""

    def __init__(self, missing: dict[str, list[str]]):
        self.failures, self.probes, self.reloads, self.probed = {}, {"digits": {}, "sentiment": {}}, [], []
        self._missing, self.url = missing, "127.0.0.1:1"
        self.access = type("Access", (), {"inference_headers": lambda self: {}})()

    def dead_instances(self):
        return self._missing

    def reload(self, model):
        self.reloads.append(model)


@pytest.fixture
def healer_with(monkeypatch):
    def make(details: dict[str, list[str]], missing: dict[str, list[str]]) -> FakeHealer:
        healer = FakeHealer(missing)
        answers = {model: itertools.chain(iter(ds), itertools.repeat("answered")) for model, ds in details.items()}

        def triton_health(url, headers=None, probes=None):
            results = []
            for model in probes:
                detail = next(answers.get(model, itertools.repeat("answered")))
                healer.probed.append(model)
                results.append(ModelHealth("triton", model, detail == "answered", 1.0, detail))
            return results

        monkeypatch.setattr(supervisor, "triton_health", triton_health)
        return healer

    return make


def test_a_model_with_a_stub_gone_is_probed_until_a_probe_meets_the_dead_instance(healer_with):
    # The lone probe meets the live instance; the third extra probe meets the dead one: reloaded once, then.
    healer = healer_with({"digits": ["answered", "answered", "answered", DEAD]}, {"digits": ["digits_0_0"]})
    healer.check()
    assert healer.reloads == ["digits"]
    assert healer.probed.count("digits") == 4 and healer.probed.count("sentiment") == 1


def test_a_stub_gone_is_not_reloaded_before_triton_reports_it_unhealthy(healer_with):
    # Unloading an instance whose death Triton has not noticed aborted tritonserver: no reload on the process alone.
    healer = healer_with({}, {"digits": ["digits_0_1"]})
    healer.check()
    assert healer.reloads == []
    assert healer.probed.count("digits") == 1 + supervisor.SUSPECT_PROBES


def test_a_probe_that_meets_a_dead_stub_reloads_at_once_and_is_not_probed_again(healer_with):
    healer = healer_with({"digits": [DEAD]}, {"digits": ["digits_0_0"]})
    healer.check()
    assert healer.reloads == ["digits"] and healer.probed.count("digits") == 1


def test_healthy_models_are_probed_once_and_never_reloaded(healer_with):
    healer = healer_with({}, {})
    for _ in range(3):
        healer.check()
    assert healer.reloads == [] and healer.probed == ["digits", "sentiment"] * 3


def test_between_deep_probes_only_a_model_with_a_stub_gone_is_probed(healer_with):
    healer = healer_with({}, {})
    healer.check(deep=False)  # every stub running: no inference at all
    assert healer.probed == [] and healer.reloads == []
    healer = healer_with({"digits": [DEAD]}, {"digits": ["digits_0_0"]})
    healer.check(deep=False)  # a stub gone is still found within the interval, and its model reloaded
    assert healer.probed == ["digits"] and healer.reloads == ["digits"]
