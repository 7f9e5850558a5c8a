"""The canary's share of requests without a version (``scripts/serving/canary.py``)."""

from __future__ import annotations

from scripts.deploy.soak_deploy import canary_share
from scripts.serving.canary import CanarySplit, canary_name, read_canaries, set_canary


def test_a_canary_takes_its_share_and_a_change_of_file_is_seen_at_the_next_request(tmp_path):
    path = tmp_path / "canary.json"
    split = CanarySplit(path, seed=7)
    assert split.torchserve_path("digits") == "/predictions/digits" and split.triton_model("digits") == "digits"
    set_canary("torchserve", "digits", 2, 20, path)
    set_canary("triton", "digits", 2, 20, path)
    routes = [split.torchserve_path("digits") for _ in range(4000)]
    share = routes.count("/predictions/digits/2.0") / len(routes)
    assert set(routes) == {"/predictions/digits", "/predictions/digits/2.0"}
    assert abs(share - 0.2) < 5 * (0.2 * 0.8 / len(routes)) ** 0.5  # 5 standard deviations of the binomial
    assert split.torchserve_path("sentiment") == "/predictions/sentiment"  # other models: untouched
    assert {split.triton_model("digits") for _ in range(200)} == {"digits", canary_name("digits")}
    set_canary("torchserve", "digits", None, path=path)  # ended: no request goes to it from now on
    assert {split.torchserve_path("digits") for _ in range(200)} == {"/predictions/digits"}
    assert read_canaries(path) == {"torchserve": {}, "triton": {"digits": {"version": 2, "percent": 20}}}
    path.unlink()
    assert split.triton_model("digits") == "digits"  # no file: no canary


def test_the_deploy_soak_reports_the_share_in_standard_deviations():
    phases = {"torchserve digits canary to_canary": 90, "torchserve digits canary to_default": 910,
              "triton digits canary to_canary": 100, "triton digits canary to_default": 900}  # fmt: skip
    shares = canary_share({"phases": phases}, "digits", 10)
    assert shares["triton"] == {"answers": 1000, "to_canary": 100, "share_percent": 10.0, "asked_percent": 10,
                                "deviation_in_sd": 0.0}  # fmt: skip
    assert shares["torchserve"]["deviation_in_sd"] == round(-10 / (1000 * 0.1 * 0.9) ** 0.5, 2)
